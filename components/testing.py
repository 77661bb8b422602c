"""Helpers for unit-testing pipelines that use the PrivacyEvaluator, without training anything.

    from dp_tfx.components import testing
    from dp_tfx.policy import PrivacyPolicy

    def test_my_policy_refuses_weak_noise(tmp_path):
      ledger = testing.make_ledger(dataset_size=60000, batch_size=256, noise_multiplier=0.5,
                                   steps=10000)
      result = testing.run_privacy_evaluator(ledger, PrivacyPolicy(max_epsilon=3, delta=1e-5),
                                             tmp_path)
      testing.assert_not_blessed(result, reason="exceeds the policy's max_epsilon")

`run_privacy_evaluator` builds real TFX artifacts (Model, PrivacyLedger, ModelBlessing,
PrivacyReport) in a directory and calls the real executor, exactly as a pipeline would.
`examples_artifact` and `run_dp_trainer` do the same for training a module on small TFRecords.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable, Dict, Optional, Sequence

from tfx.components.evaluator import constants as evaluator_constants
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from dp_tfx.audit.result import PrivacyAudit
from dp_tfx.components import artifacts, ledger_records, specs
from dp_tfx.components.privacy_evaluator import executor as privacy_evaluator_executor
from dp_tfx.config import POISSON, DPConfig
from dp_tfx.ledger import LEDGER_FILE_NAME, PrivacyLedger, directory_digest
from dp_tfx.plan import TrainingPlan
from dp_tfx.poisson_batches import BatchManifest
from dp_tfx.policy import PrivacyPolicy
from dp_tfx.report import REPORT_FILE


def make_ledger(
  *,
  dataset_size: int,
  batch_size: int,
  noise_multiplier: float,
  steps: int,
  l2_norm_clip: float = 1.0,
  sampling: str = POISSON,
  num_microbatches: Optional[int] = None,
  seeded: bool = False,
) -> PrivacyLedger:
  """A ledger recording `steps` noisy steps of a run with these facts, as the trainer would."""
  plan = TrainingPlan.from_config(
    DPConfig(
      l2_norm_clip=l2_norm_clip,
      noise_multiplier=noise_multiplier,
      batch_size=batch_size,
      steps=steps,
      sampling=sampling,
      num_microbatches=num_microbatches,
    ),
    dataset_size,
  )
  ledger = PrivacyLedger(dataset_size=dataset_size, dataset_fingerprint="sha256:test-data")
  ledger.start_segment(plan, seeded=seeded)
  ledger.segments[-1].noisy_steps = steps
  return ledger


@dataclasses.dataclass
class EvaluationResult:
  """What the PrivacyEvaluator produced: the blessing artifact and the parsed report."""

  blessing: standard_artifacts.ModelBlessing
  report: dict
  report_dir: str

  @property
  def blessed(self) -> bool:
    return (
      self.blessing.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY)
      == evaluator_constants.BLESSED_VALUE
    )

  @property
  def reasons(self) -> list:
    return self.report["decision"]["reasons"]


def _artifact(kind, uri, artifact_id=1):
  artifact = kind()
  artifact.uri = str(uri)
  artifact.id = artifact_id
  os.makedirs(artifact.uri, exist_ok=True)
  return artifact


def examples_artifact(
  directory, split_files: Dict[str, os.PathLike]
) -> standard_artifacts.Examples:
  """An Examples artifact under `directory` whose splits hold copies of the given TFRecord files.

  Args:
    directory: where the artifact is created.
    split_files: split name ("train", "eval") -> a TFRecord file of serialized tf.Examples,
      copied under its own name (a ".gz" suffix, as ExampleGens write, marks it GZIP-compressed).
  """
  examples = _artifact(standard_artifacts.Examples, directory)
  examples.split_names = json.dumps(sorted(split_files))
  for split, source in split_files.items():
    target = pathlib.Path(examples.uri) / f"Split-{split}"
    target.mkdir()
    (target / pathlib.Path(source).name).write_bytes(pathlib.Path(source).read_bytes())
  return examples


def run_dp_trainer(
  examples: standard_artifacts.Examples,
  directory,
  config: DPConfig,
  module_file: str,
  custom_config: Optional[dict] = None,
  ledger_history_dir: Optional[str] = None,
  data_source: Optional[str] = None,
  splits: Optional[Dict[str, str]] = None,
  privacy_policy: Optional[PrivacyPolicy] = None,
  earlier_ledgers: Sequence[artifacts.PrivacyLedger] = (),
  budget_root: Optional[str] = None,
) -> Dict[str, list]:
  """Runs the real DPTrainer executor on `examples`; returns its output dict (model, model_run,
  privacy_ledger artifacts under `directory`). The ledger history: `ledger_history_dir`; with
  `budget_root`, the DPTrainer's default (the data source's budget there); else
  directory/history, a budget of the run's own. `splits`: {"train_split": ..., "eval_split":
  ...} if not the default names; `earlier_ledgers`: earlier runs' PrivacyLedger artifacts, as
  the pipeline's Resolver hands them over (see `ledger_artifact`)."""
  from dp_tfx.components.dp_trainer import executor as dp_trainer_executor

  root = pathlib.Path(directory)
  if ledger_history_dir is None and budget_root is None:
    ledger_history_dir = root / "history"
  outputs = {
    specs.MODEL_KEY: [_artifact(standard_artifacts.Model, root / "model")],
    specs.MODEL_RUN_KEY: [_artifact(standard_artifacts.ModelRun, root / "run")],
    specs.PRIVACY_LEDGER_KEY: [_artifact(artifacts.PrivacyLedger, root / "ledger")],
  }
  inputs = {specs.EXAMPLES_KEY: [examples]}
  if earlier_ledgers:
    inputs[specs.EARLIER_PRIVACY_LEDGERS_KEY] = list(earlier_ledgers)
  dp_trainer_executor.Executor().Do(
    inputs,
    outputs,
    {
      specs.DP_CONFIG_KEY: config.to_json(),
      specs.MODULE_FILE_KEY: module_file,
      specs.CUSTOM_CONFIG_KEY: json.dumps(custom_config or {}),
      specs.LEDGER_HISTORY_DIR_KEY: None if ledger_history_dir is None else str(ledger_history_dir),
      specs.DATA_SOURCE_KEY: data_source,
      specs.BUDGET_ROOT_KEY: budget_root,
      specs.PRIVACY_POLICY_KEY: privacy_policy.to_json() if privacy_policy else None,
      **(splits or {}),
    },
  )
  return outputs


def ledger_artifact(
  ledger: PrivacyLedger, directory, artifact_id: int = 1
) -> artifacts.PrivacyLedger:
  """A PrivacyLedger artifact under `directory` holding `ledger`'s file, with what the DPTrainer
  records in MLMD beside it (content hash, ledger history, segments, and their signature with a
  ledger key set: ledger_records.record_ledger). As an earlier run's artifact, it is an
  `earlier_ledgers` of run_privacy_evaluator and run_dp_trainer."""
  artifact = _artifact(artifacts.PrivacyLedger, directory, artifact_id=artifact_id)
  ledger.save(pathlib.Path(artifact.uri) / LEDGER_FILE_NAME)
  ledger_records.record_ledger(artifact, ledger)
  return artifact


def read_evaluation(
  blessing: standard_artifacts.ModelBlessing, report: artifacts.PrivacyReport
) -> EvaluationResult:
  """The result of a PrivacyEvaluator run, from its output artifacts."""
  return EvaluationResult(
    blessing=blessing,
    report_dir=report.uri,
    report=json.loads((pathlib.Path(report.uri) / REPORT_FILE).read_text()),
  )


def run_privacy_evaluator(
  ledger: PrivacyLedger,
  policy: PrivacyPolicy,
  directory,
  upstream_blessed: Optional[bool] = None,
  tamper: Optional[Callable[[pathlib.Path], None]] = None,
  audit: Optional[PrivacyAudit] = None,
  earlier_ledgers: Sequence[artifacts.PrivacyLedger] = (),
  poisson_batches: Optional[BatchManifest] = None,
) -> EvaluationResult:
  """Runs the real PrivacyEvaluator executor on `ledger`, paired with a stand-in model.

  Args:
    ledger: the ledger to judge; its model digest is set to the stand-in model's.
    policy: the privacy policy.
    directory: where the artifacts are created.
    upstream_blessed: None for no upstream blessing, else its verdict.
    tamper: called with the written ledger file's path before the evaluator runs (to delete or
      edit it, or the other inputs beside it, as a test of failing closed).
    audit: a PrivacyAuditor result to hand over; it is attached to the stand-in model.
    earlier_ledgers: earlier runs' PrivacyLedger artifacts (see `ledger_artifact`), handed over
      as the pipeline's Resolver does (dp_tfx.components.earlier_runs).
    poisson_batches: the manifest of the PoissonBatches the DPTrainer streamed: an artifact
      with it, and the facts PoissonBatchGen records in MLMD, is handed over.
  """
  root = pathlib.Path(directory)
  model = _artifact(standard_artifacts.Model, root / "model", artifact_id=7)
  serving_dir = pathlib.Path(path_utils.serving_model_dir(model.uri))
  serving_dir.mkdir(parents=True, exist_ok=True)
  (serving_dir / "saved_model.pb").write_bytes(b"stand-in model")
  ledger.model_digest = directory_digest(serving_dir)
  # The file, and what the DPTrainer records in MLMD beside it (the evaluator checks the file
  # against it).
  this_ledger = ledger_artifact(ledger, root / "ledger")
  ledger_path = pathlib.Path(this_ledger.uri) / LEDGER_FILE_NAME
  input_dict = {specs.MODEL_KEY: [model], specs.PRIVACY_LEDGER_KEY: [this_ledger]}
  if earlier_ledgers:
    input_dict[specs.EARLIER_PRIVACY_LEDGERS_KEY] = list(earlier_ledgers)
  if upstream_blessed is not None:
    upstream = _artifact(standard_artifacts.ModelBlessing, root / "upstream")
    upstream.set_int_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, int(upstream_blessed)
    )
    input_dict[specs.MODEL_BLESSING_KEY] = [upstream]
  if poisson_batches is not None:
    batches = _artifact(artifacts.PoissonBatches, root / "batches")
    poisson_batches.save(batches.uri)
    artifacts.record_batch_facts(batches, poisson_batches)
    input_dict[specs.POISSON_BATCHES_KEY] = [batches]
  if audit is not None:
    audit_artifact = _artifact(artifacts.PrivacyAudit, root / "audit")
    dataclasses.replace(audit, model_digest=ledger.model_digest).save(audit_artifact.uri)
    input_dict[specs.PRIVACY_AUDIT_KEY] = [audit_artifact]
  if tamper is not None:
    tamper(ledger_path)
  blessing = _artifact(standard_artifacts.ModelBlessing, root / "blessing")
  report = _artifact(artifacts.PrivacyReport, root / "report")
  privacy_evaluator_executor.Executor().Do(
    input_dict,
    {specs.BLESSING_KEY: [blessing], specs.PRIVACY_REPORT_KEY: [report]},
    {specs.PRIVACY_POLICY_KEY: policy.to_json()},
  )
  return read_evaluation(blessing, report)


def assert_blessed(result: EvaluationResult) -> None:
  assert result.blessed, f"expected BLESSED, got: {result.reasons}"
  assert os.path.exists(os.path.join(result.blessing.uri, evaluator_constants.BLESSED_FILE_NAME))


def assert_not_blessed(result: EvaluationResult, reason: str = "") -> None:
  """Asserts NOT blessed, and that some reason contains `reason`."""
  assert not result.blessed, "expected NOT BLESSED, but the model was blessed"
  assert os.path.exists(
    os.path.join(result.blessing.uri, evaluator_constants.NOT_BLESSED_FILE_NAME)
  )
  assert any(reason in r for r in result.reasons), (
    f"no reason mentions {reason!r}: {result.reasons}"
  )
