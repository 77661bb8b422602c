"""The DP MNIST pipeline: ExampleGen -> DPTrainer -> PrivacyEvaluator -> Pusher.

One `create_pipeline`; the runners (local, beam, kubeflow) only choose the orchestrator.
"""

from __future__ import annotations

import os
from typing import List, Optional

from tfx import v1 as tfx

from dp_tfx.components.dp_trainer.component import DPTrainer
from dp_tfx.components.privacy_evaluator.component import PrivacyEvaluator
from dp_tfx.config import DPConfig
from dp_tfx.pipelines import mnist_data, mnist_model
from dp_tfx.policy import PrivacyPolicy

MODULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_model.py")


def create_pipeline(*, pipeline_name: str, pipeline_root: str, data_root: str,
                    serving_model_dir: str, dp_config: DPConfig, privacy_policy: PrivacyPolicy,
                    module_file: str = MODULE_FILE, hyperparameters: Optional[dict] = None,
                    metadata_path: Optional[str] = None,
                    beam_pipeline_args: Optional[List[str]] = None,
                    min_accuracy: Optional[float] = None,
                    ledger_history_dir: Optional[str] = None) -> tfx.dsl.Pipeline:
  """Builds the pipeline.

  Args:
    pipeline_name: the name recorded in MLMD.
    pipeline_root: where artifacts are written.
    data_root: TFRecords of tf.Example under train/ and eval/ (see mnist_data).
    serving_model_dir: the Pusher's destination for blessed models.
    dp_config: the DPTrainer's DP-SGD configuration.
    privacy_policy: what the PrivacyEvaluator requires before a push.
    module_file: the DPTrainer module (feature_spec, decode, build_model, compile_kwargs).
    hyperparameters: custom_config handed to the module.
    metadata_path: an SQLite MLMD file for local runs; None when the orchestrator provides MLMD.
    beam_pipeline_args: options for the Beam-based components (e.g. --direct_num_workers=2).
    min_accuracy: if set, the TFX Evaluator checks eval accuracy >= this, and its blessing is the
      PrivacyEvaluator's upstream blessing: both gates must pass before a push.
    ledger_history_dir: where ledgers outlive runs, so reruns on the same data add up.
  """
  example_gen = tfx.components.ImportExampleGen(
      input_base=data_root,
      input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name="train", pattern=f"{mnist_data.TRAIN_DIR}/*"),
          tfx.proto.Input.Split(name="eval", pattern=f"{mnist_data.EVAL_DIR}/*"),
      ]))
  trainer = DPTrainer(examples=example_gen.outputs["examples"], module_file=module_file,
                      dp_config=dp_config, custom_config=hyperparameters,
                      ledger_history_dir=ledger_history_dir)
  components = [example_gen, trainer]
  upstream_blessing = None
  if min_accuracy is not None:
    accuracy_gate = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        eval_config=_accuracy_eval_config(min_accuracy))
    components.append(accuracy_gate)
    upstream_blessing = accuracy_gate.outputs["blessing"]
  privacy_evaluator = PrivacyEvaluator(model=trainer.outputs["model"],
                                       privacy_ledger=trainer.outputs["privacy_ledger"],
                                       privacy_policy=privacy_policy,
                                       model_blessing=upstream_blessing)
  pusher = tfx.components.Pusher(
      model=trainer.outputs["model"], model_blessing=privacy_evaluator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name, pipeline_root=pipeline_root,
      components=components + [privacy_evaluator, pusher],
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
          if metadata_path else None),
      beam_pipeline_args=beam_pipeline_args)


def _accuracy_eval_config(min_accuracy: float):
  """TFMA config: sparse categorical accuracy of the logits on the eval split, with a floor."""
  import tensorflow_model_analysis as tfma

  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key=mnist_model.LABEL_KEY,
                                  signature_name="serving_default", prediction_key="outputs")],
      slicing_specs=[tfma.SlicingSpec()],
      metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(
          class_name="SparseCategoricalAccuracy",
          threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
              lower_bound={"value": min_accuracy})))])])
