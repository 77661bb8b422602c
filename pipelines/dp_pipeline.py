"""The DP pipeline: ExampleGen -> DPTrainer -> PrivacyAuditor -> PrivacyEvaluator -> Pusher.

One `create_pipeline` for every example (MNIST, the character language model); the runners
(local, beam, kubeflow) only choose the orchestrator. Optional parts: a non-private control (a
standard TFX Trainer running the module's run_fn, audited beside the DP model, never pushed) and
the TFX Evaluator's accuracy gate. Locally and on Beam a Resolver also hands the DPTrainer and the
PrivacyEvaluator every earlier PrivacyLedger artifact of the pipeline in MLMD (see
`check_earlier_ledgers`).
"""

from __future__ import annotations

from typing import List, Optional

from tfx import v1 as tfx

from dp_tfx.components.dp_trainer.component import DPTrainer
from dp_tfx.components.earlier_runs import EARLIER_LEDGERS_OUTPUT, earlier_privacy_ledgers
from dp_tfx.components.poisson_batch_gen.component import PoissonBatchGen
from dp_tfx.components.privacy_auditor.component import PrivacyAuditor
from dp_tfx.components.privacy_evaluator.component import PrivacyEvaluator
from dp_tfx.components.pusher.component import Pusher
from dp_tfx.config import DPConfig
from dp_tfx.pipelines import mnist_data
from dp_tfx.policy import PrivacyPolicy


def create_pipeline(
  *,
  pipeline_name: str,
  pipeline_root: str,
  data_root: str,
  serving_model_dir: str,
  dp_config: DPConfig,
  privacy_policy: PrivacyPolicy,
  module_file: Optional[str] = None,
  module_path: Optional[str] = None,
  hyperparameters: Optional[dict] = None,
  metadata_path: Optional[str] = None,
  beam_pipeline_args: Optional[List[str]] = None,
  min_accuracy: Optional[float] = None,
  label_key: Optional[str] = None,
  ledger_history_dir: Optional[str] = None,
  data_source: Optional[str] = None,
  budget_root: Optional[str] = None,
  audit: bool = True,
  canary_file: Optional[str] = None,
  control_config: Optional[dict] = None,
  check_earlier_ledgers: Optional[bool] = None,
  poisson_batches: bool = False,
) -> tfx.dsl.Pipeline:
  """Builds the pipeline.

  Args:
    pipeline_name: the name recorded in MLMD.
    pipeline_root: where artifacts are written.
    data_root: TFRecords of tf.Example under train/ and eval/ (see mnist_data, lm_data).
    serving_model_dir: the Pusher's destination for blessed models.
    dp_config: the DPTrainer's DP-SGD configuration.
    privacy_policy: what the PrivacyEvaluator requires before a push.
    module_file: the user module's file (feature_spec, decode, build_model, compile_kwargs;
      run_fn for the control; canary_examples when there are canaries).
    module_path: or the module's import path (give one of the two).
    hyperparameters: custom_config handed to the module.
    metadata_path: an SQLite MLMD file for local runs; None when the orchestrator provides MLMD.
    beam_pipeline_args: options for the Beam-based components (e.g. --direct_num_workers=2).
    min_accuracy: if set, the TFX Evaluator checks eval accuracy of `label_key` >= this, and its
      blessing is the PrivacyEvaluator's upstream blessing: both gates must pass before a push.
    label_key: the label feature, for the accuracy gate.
    ledger_history_dir: the privacy budget of the data source: a directory that outlives runs,
      where every run records its steps (concurrent runs included) and composes with every
      other run recorded there, whatever data it had (default: the data source's budget under
      `budget_root`).
    data_source: the data source's name, which names its budget (default: "pipeline NAME").
    budget_root: where the data sources' budgets live (see DPTrainer).
    audit: run the PrivacyAuditor (membership attack, canaries) and gate on it.
    canary_file: the canaries inserted into the training data, for the auditor.
    control_config: if set, also train a non-private control with a standard TFX Trainer (the
      module's run_fn, given this custom_config) and audit it beside the DP model.
    check_earlier_ledgers: hand the DPTrainer and the PrivacyEvaluator every earlier
      PrivacyLedger artifact of the pipeline in MLMD (a Resolver, `earlier_privacy_ledgers`), so
      that a segment of an earlier run missing from the ledger history (deleted, or left in
      another history directory) is caught even when no later snapshot saw it: the trainer
      refuses before training, the evaluator does not bless. Default: when `metadata_path` is
      given (the local and Beam runners). Without it, i.e. on Kubeflow V2, it is left out: that
      compiler accepts no Resolver that resolves more than one artifact, so there the evaluator
      checks the history against this run's snapshot only.
    poisson_batches: draw every step's Poisson sample on Beam first (PoissonBatchGen) and have
      the DPTrainer stream them, a step at a time, instead of loading the train split into
      memory: for training data larger than memory. Disk: about epochs x the train split.
  """
  if min_accuracy is not None and not label_key:
    raise ValueError("the accuracy gate (min_accuracy) needs the label_key")
  example_gen = tfx.components.ImportExampleGen(
    input_base=data_root,
    input_config=tfx.proto.Input(
      splits=[
        tfx.proto.Input.Split(name="train", pattern=f"{mnist_data.TRAIN_DIR}/*"),
        tfx.proto.Input.Split(name="eval", pattern=f"{mnist_data.EVAL_DIR}/*"),
      ]
    ),
  )
  if check_earlier_ledgers is None:
    check_earlier_ledgers = metadata_path is not None
  components = [example_gen]
  earlier_ledgers = None
  if check_earlier_ledgers:
    resolver = earlier_privacy_ledgers(pipeline_name=pipeline_name)
    components.append(resolver)
    earlier_ledgers = resolver.outputs[EARLIER_LEDGERS_OUTPUT]
  batches = None
  if poisson_batches:
    batch_gen = PoissonBatchGen(examples=example_gen.outputs["examples"], dp_config=dp_config)
    components.append(batch_gen)
    batches = batch_gen.outputs["poisson_batches"]
  trainer = DPTrainer(
    examples=example_gen.outputs["examples"],
    module_file=module_file,
    module_path=module_path,
    dp_config=dp_config,
    custom_config=hyperparameters,
    ledger_history_dir=ledger_history_dir,
    data_source=data_source,
    budget_root=budget_root,
    privacy_policy=privacy_policy,
    earlier_privacy_ledgers=earlier_ledgers,
    poisson_batches=batches,
  )
  components.append(trainer)
  upstream_blessing = privacy_audit = None
  if min_accuracy is not None:
    accuracy_gate = tfx.components.Evaluator(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      eval_config=_accuracy_eval_config(min_accuracy, label_key),
    )
    components.append(accuracy_gate)
    upstream_blessing = accuracy_gate.outputs["blessing"]
  if audit:
    control = None
    if control_config is not None:
      # The standard Trainer takes a module file, or run_fn as an import path.
      control = tfx.components.Trainer(
        module_file=module_file,
        run_fn=f"{module_path}.run_fn" if module_path else None,
        examples=example_gen.outputs["examples"],
        custom_config=control_config,
      ).with_id("NonPrivateControl")
      components.append(control)
    auditor = PrivacyAuditor(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      control_model=control.outputs["model"] if control else None,
      module_file=module_file,
      module_path=module_path,
      custom_config=hyperparameters,
      canary_file=canary_file,
    )
    components.append(auditor)
    privacy_audit = auditor.outputs["privacy_audit"]
  privacy_evaluator = PrivacyEvaluator(
    model=trainer.outputs["model"],
    privacy_ledger=trainer.outputs["privacy_ledger"],
    privacy_policy=privacy_policy,
    model_blessing=upstream_blessing,
    privacy_audit=privacy_audit,
    earlier_privacy_ledgers=earlier_ledgers,
    poisson_batches=batches,
  )
  pusher = Pusher(
    model=trainer.outputs["model"],
    model_blessing=privacy_evaluator.outputs["blessing"],
    push_destination=tfx.proto.PushDestination(
      filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
    ),
  )
  return tfx.dsl.Pipeline(
    pipeline_name=pipeline_name,
    pipeline_root=pipeline_root,
    components=components + [privacy_evaluator, pusher],
    metadata_connection_config=(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
      if metadata_path
      else None
    ),
    beam_pipeline_args=beam_pipeline_args,
  )


def _accuracy_eval_config(min_accuracy: float, label_key: str):
  """TFMA config: sparse categorical accuracy of the logits on the eval split, with a floor."""
  import tensorflow_model_analysis as tfma

  return tfma.EvalConfig(
    model_specs=[
      tfma.ModelSpec(
        label_key=label_key, signature_name="serving_default", prediction_key="outputs"
      )
    ],
    slicing_specs=[tfma.SlicingSpec()],
    metrics_specs=[
      tfma.MetricsSpec(
        metrics=[
          tfma.MetricConfig(
            class_name="SparseCategoricalAccuracy",
            threshold=tfma.MetricThreshold(
              value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_accuracy})
            ),
          )
        ]
      )
    ],
  )
