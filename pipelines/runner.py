"""`dp-tfx pipeline`: runs an example DP pipeline locally, on Beam, or compiles it for Kubeflow.

The runners only choose the orchestrator; the pipeline is `dp_pipeline.create_pipeline` with an
example's data and module (`examples.EXAMPLES`: the MNIST CNN, the character language model).
After a local or Beam run the verdict is read back from MLMD (the artifacts the run recorded).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
import uuid
from typing import List, Optional

from dp_tfx import budget
from dp_tfx.config import DPConfig
from dp_tfx.policy import PrivacyPolicy
from dp_tfx.report import REPORT_FILE

LOCAL, BEAM, KUBEFLOW = "local", "beam", "kubeflow"
RUNNERS = (LOCAL, BEAM, KUBEFLOW)
DEFAULT_IMAGE = "dp-tfx:latest"
# The Pusher's own property names (private in tfx.components.pusher.executor).
_PUSHED_PROPERTY = "pushed"
_PUSHED_DESTINATION_PROPERTY = "pushed_destination"


@dataclasses.dataclass
class PipelineOptions:
  """Everything `dp-tfx pipeline` can be told; paths default to places under output_dir."""

  output_dir: str
  dp_config: DPConfig
  privacy_policy: PrivacyPolicy
  example: str = "mnist"
  runner: str = LOCAL
  data_source: str = "embedded"
  data_limit: Optional[int] = None
  hyperparameters: Optional[dict] = None
  beam_pipeline_args: List[str] = dataclasses.field(default_factory=list)
  container_image: str = DEFAULT_IMAGE
  serving_model_dir: Optional[str] = None
  min_accuracy: Optional[float] = None
  audit: bool = True
  control: bool = False
  # Draw every step's Poisson sample on Beam first (PoissonBatchGen); the DPTrainer streams them.
  poisson_batches: bool = False
  # The data source's name, which names its budget (default "EXAMPLE:DATA", e.g. "mnist:embedded":
  # the same people whatever the output dir or --data-limit).
  ledger_data_source: Optional[str] = None
  # Where the data sources' budgets live (default $DP_TFX_BUDGET_ROOT, else the user's state
  # directory): every run on the data source composes there, whatever its output_dir.
  budget_root: Optional[str] = None
  # Or the ledger history itself, instead of the data source's budget under the budget root.
  ledger_history_dir: Optional[str] = None
  # Where the pipeline's artifacts and the example's data are written (default OUTPUT_DIR/
  # pipeline_root and OUTPUT_DIR/data): any tf.io.gfile filesystem (gs://, s3://) too, as a
  # Kubeflow pipeline needs, whose containers cannot see this machine's disk. With a pipeline
  # root given, pushed models and the ledger history default to places under it.
  pipeline_root: Optional[str] = None
  data_root: Optional[str] = None

  def path(self, name: str) -> str:
    return str(pathlib.Path(self.output_dir).resolve() / name)

  @property
  def pipeline_root_uri(self) -> str:
    return _location(self.pipeline_root) or self.path("pipeline_root")

  @property
  def data_root_uri(self) -> str:
    return _location(self.data_root) or self.path("data")

  def _default_place(self, name: str) -> str:
    """OUTPUT_DIR/name, or PIPELINE_ROOT/name when a pipeline root was given."""
    if self.pipeline_root is None:
      return self.path(name)
    return os.path.join(self.pipeline_root_uri, name)

  @property
  def serving_dir(self) -> str:
    return _location(self.serving_model_dir) or self._default_place("serving_model")

  @property
  def data_source_name(self) -> str:
    return self.ledger_data_source or f"{self.example}:{self.data_source}"

  @property
  def budget_root_uri(self) -> str:
    return _location(self.budget_root) or _location(budget.default_budget_root())

  @property
  def ledger_history(self) -> str:
    return _location(self.ledger_history_dir) or budget.history_dir(
      self.budget_root_uri, self.data_source_name
    )


def _location(path: Optional[str]) -> Optional[str]:
  """A URI as it is, a local path made absolute; None stays None."""
  if path is None or "://" in path:
    return path
  return str(pathlib.Path(path).resolve())


def run(options: PipelineOptions) -> dict:
  """Runs (or compiles) the pipeline and returns the summary that `--json` prints."""
  from tfx import v1 as tfx  # TFX loads only for this command

  from dp_tfx.components.dp_trainer import control
  from dp_tfx.pipelines import dp_pipeline
  from dp_tfx.pipelines.examples import EXAMPLES

  if options.runner not in RUNNERS:
    raise ValueError(f"runner must be one of {RUNNERS}; got {options.runner!r}")
  if options.example not in EXAMPLES:
    raise ValueError(f"example must be one of {sorted(EXAMPLES)}; got {options.example!r}")
  example = EXAMPLES[options.example]
  _check_before_training(options, example)
  _check_output_dir(options)
  hyperparameters = {**example.hyperparameters, **(options.hyperparameters or {})}
  control_config = None
  if options.control:  # the control trains like the DP model: same epochs, batch, hyperparameters
    control_config = control.control_custom_config(
      hyperparameters, options.dp_config.epochs, options.dp_config.batch_size
    )
  data_root = options.data_root_uri
  canary_file = example.write_data(data_root, options.data_source, options.data_limit)
  pipeline = dp_pipeline.create_pipeline(
    pipeline_name=example.pipeline_name,
    pipeline_root=options.pipeline_root_uri,
    data_root=data_root,
    serving_model_dir=options.serving_dir,
    dp_config=options.dp_config,
    privacy_policy=options.privacy_policy,
    module_path=example.module_path,
    hyperparameters=hyperparameters,
    metadata_path=None if options.runner == KUBEFLOW else options.path("metadata.sqlite"),
    beam_pipeline_args=options.beam_pipeline_args,
    min_accuracy=options.min_accuracy,
    label_key=example.label_key,
    ledger_history_dir=_location(options.ledger_history_dir),
    data_source=options.data_source_name,
    budget_root=options.budget_root_uri,
    audit=options.audit,
    canary_file=canary_file,
    control_config=control_config,
    # Kubeflow V2 compiles no Resolver of more than one artifact (see create_pipeline).
    check_earlier_ledgers=options.runner != KUBEFLOW,
    poisson_batches=options.poisson_batches,
  )
  summary = {
    "example": example.name,
    "runner": options.runner,
    "pipeline_root": options.pipeline_root_uri,
    "data_root": data_root,
    "data_source": options.data_source_name,
    "ledger_history": options.ledger_history,
    "max_epsilon": options.privacy_policy.max_epsilon,
    "policy": json.loads(options.privacy_policy.to_json()),
  }
  started = time.time()
  if options.runner == KUBEFLOW:
    pipeline_file = options.path(f"kubeflow/{example.pipeline_name}-pipeline.json")
    os.makedirs(os.path.dirname(pipeline_file), exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
        default_image=options.container_image
      ),
      output_filename=pipeline_file,
    )
    runner.run(pipeline)
    summary.update(
      pipeline_file=pipeline_file,
      epsilon=None,
      delta=None,
      accuracy=None,
      pushed=False,
      pushed_model_dir=None,
      report_dir=None,
    )
  else:
    if options.runner == LOCAL:
      tfx.orchestration.LocalDagRunner().run(pipeline)
    else:
      from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

      BeamDagRunner().run(pipeline)
    summary.update(read_outcome(options.path("metadata.sqlite"), since_ms=int(started * 1000)))
  summary["wall_seconds"] = round(time.time() - started, 1)
  summary["verdict"] = _verdict(summary)
  return summary


def _check_before_training(options: PipelineOptions, example) -> None:
  """Refuses option combinations that could only fail after training has spent privacy."""
  if options.min_accuracy is not None and example.label_key is None:
    raise ValueError(f"the {example.name} example has no accuracy gate (--min-accuracy)")
  if options.control and not options.audit:
    raise ValueError("the non-private control is only trained to be audited; drop --no-audit")
  if options.privacy_policy.max_canary_exposure is not None and not (
    options.audit and example.has_canaries
  ):
    raise ValueError(
      f"max_canary_exposure needs the audit of an example with canaries (lm); "
      f"{example.name} with audit={options.audit} would never be blessed"
    )
  if options.privacy_policy.require_signature and options.runner != KUBEFLOW:
    from dp_tfx.policy import verification_key

    # No ledger key where the pipeline runs: ValueError, before anything is written. (A Kubeflow
    # pipeline is compiled here; its steps need the key where they run.)
    verification_key(options.privacy_policy)
  unknown = sorted(set(options.hyperparameters or {}) - set(example.hyperparameter_names))
  if unknown:
    raise ValueError(
      f"the {example.name} example's module does not use {unknown}; it takes "
      f"{sorted(example.hyperparameter_names)}"
    )


def _check_output_dir(options: PipelineOptions) -> None:
  """Refuses an output dir that cannot be created or written, before anything is written there.

  Found later, such a dir failed with a traceback, and the ledger history (where the
  DPTrainer records its steps) only once training had spent privacy. Each directory is created
  and a probe file written and removed in it, through tf.io.gfile as the pipeline writes; the
  probe's name is one that ledger-history readers skip as a write in flight. A Kubeflow run
  writes its ledger history from its containers: only the output dir is checked then.
  """
  import tensorflow as tf

  if options.ledger_history.startswith("ram://"):
    raise ValueError(
      f"the ledger history {options.ledger_history} is in TensorFlow's in-memory "
      "filesystem, which forgets it when the process ends; give a directory that "
      "outlives runs as --ledger-history"
    )
  checks = [
    ("the output directory", str(pathlib.Path(options.output_dir).resolve()), "--output-dir")
  ]
  if options.runner != KUBEFLOW:
    checks.append(
      (
        "the ledger history",
        options.ledger_history,
        "--ledger-history" if options.ledger_history_dir else "--budget-root",
      )
    )
  for what, directory, option in checks:
    probe = os.path.join(directory, f".write-probe.json-{uuid.uuid4().hex}")
    try:
      tf.io.gfile.makedirs(directory)
      with tf.io.gfile.GFile(probe, "wb") as handle:
        handle.write(b"")
      tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as error:
      reason = getattr(error, "message", None) or str(error)  # TF's: "PATH; No such file ..."
      raise ValueError(
        f"{what} {directory} cannot be created or written "
        f"({reason.split('; ')[-1]}); choose another {option}"
      ) from None
  shared = options.ledger_history_dir or options.budget_root
  if options.runner == KUBEFLOW and not (shared and "://" in shared):
    raise ValueError(
      "a Kubeflow pipeline's containers cannot see this machine's disk, nor its "
      "budgets: give --budget-root (or --ledger-history) on storage every run "
      "shares, e.g. gs://BUCKET/dp_tfx/budgets"
    )


def _verdict(summary: dict) -> str:
  if summary["runner"] == KUBEFLOW:
    return f"compiled for Kubeflow: {summary['pipeline_file']}"
  if summary["pushed"]:
    return (
      f"PUSHED to {summary['pushed_model_dir']}: epsilon {summary['epsilon']:.4g} <= "
      f"max_epsilon {summary['max_epsilon']:g} at delta {summary['delta']:.3g}"
    )
  return "NOT PUSHED: " + "; ".join(summary.get("reasons") or ["the model was not blessed"])


def read_outcome(metadata_path: str, since_ms: int = 0) -> dict:
  """epsilon, delta, accuracy, verdict and paths of the run that started at `since_ms`
  (milliseconds since the epoch), from the MLMD records it wrote: never an earlier run's
  verdict, when this one wrote none."""
  from ml_metadata import metadata_store
  from ml_metadata.proto import metadata_store_pb2
  from tfx.types import standard_artifacts

  from dp_tfx.components import artifacts
  from dp_tfx.components.dp_trainer.executor import EVAL_METRIC_PREFIX

  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  store = metadata_store.MetadataStore(config)

  def latest(type_name):
    found = [
      artifact
      for artifact in store.get_artifacts_by_type(type_name)
      if artifact.create_time_since_epoch >= since_ms
    ]
    return max(found, key=lambda a: a.id) if found else None

  report_artifact = latest(artifacts.PrivacyReport.TYPE_NAME)
  if report_artifact is None:
    return {
      "audit": None,
      "epsilon": None,
      "delta": None,
      "blessed": False,
      "reasons": ["this run wrote no privacy report: it ended before the PrivacyEvaluator"],
      "accuracy": None,
      "pushed": False,
      "pushed_model_dir": None,
      "report_dir": None,
    }
  model = _evaluated_model(store, report_artifact)
  pushed = latest(standard_artifacts.PushedModel.TYPE_NAME)
  report = json.loads((pathlib.Path(report_artifact.uri) / REPORT_FILE).read_text())
  accuracy = model.custom_properties.get(EVAL_METRIC_PREFIX + "accuracy") if model else None
  was_pushed = bool(pushed and pushed.custom_properties[_PUSHED_PROPERTY].int_value == 1)
  return {
    "audit": _audit_summary(report.get("audit")),
    "epsilon": report["epsilon"],
    "delta": report["delta"],
    "blessed": report["decision"]["blessed"],
    "reasons": report["decision"]["reasons"],
    "accuracy": accuracy.double_value if accuracy else None,
    "pushed": was_pushed,
    "pushed_model_dir": (
      pushed.custom_properties[_PUSHED_DESTINATION_PROPERTY].string_value if was_pushed else None
    ),
    "report_dir": report_artifact.uri,
  }


def _evaluated_model(store, report_artifact):
  """The Model the PrivacyEvaluator judged (an input of the execution that wrote the report),
  not, say, the non-private control's."""
  from ml_metadata.proto import metadata_store_pb2
  from tfx.types import standard_artifacts

  (written,) = [
    event
    for event in store.get_events_by_artifact_ids([report_artifact.id])
    if event.type == metadata_store_pb2.Event.OUTPUT
  ]
  inputs = [
    event.artifact_id
    for event in store.get_events_by_execution_ids([written.execution_id])
    if event.type == metadata_store_pb2.Event.INPUT
  ]
  model_type = store.get_artifact_type(standard_artifacts.Model.TYPE_NAME)
  (model,) = [a for a in store.get_artifacts_by_id(inputs) if a.type_id == model_type.id]
  return model


def _audit_summary(section: Optional[dict]) -> Optional[dict]:
  """The --json "audit" entry: the lower bound and exposure by repetitions (and the control's,
  with the training examples the two models disagree on most)."""
  if section is None:
    return None

  def one(part: dict) -> dict:
    return {
      "empirical_epsilon_lower_bound": part["empirical_epsilon_lower_bound"],
      "canary_exposure": part["canary_exposure"],
      "held_out_metrics": part["held_out_metrics"],
    }

  summary = one(section)
  if section.get("control"):
    summary["control"] = one(section["control"])
    summary["disagreements"] = section.get("disagreements", [])
  return summary
