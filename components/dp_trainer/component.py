"""DPTrainer: trains a Keras model with DP-SGD and records a privacy ledger.

Inputs:
  examples: Examples with "train" and "eval" splits of tf.Examples (one example = one privacy unit).
  schema, transform_graph, hyperparameters: optional, handed to the user module.
Parameters:
  module_file or module_path: the user module (see `components.dp_trainer.executor` for the
    functions it provides: feature_spec, decode, build_model, compile_kwargs).
  dp_config: a dp_tfx.DPConfig (clip, noise or target epsilon, batch, epochs or steps, ...).
  custom_config: a dict of hyperparameters for the user module.
  ledger_history_dir: a directory that outlives pipeline runs. The ledger of every run on the
    same data continues there, so a rerun (or a retry after a crash) adds to what earlier runs
    spent (invariant 5). Default: "history" beside the privacy_ledger artifacts in the pipeline
    root.
Outputs:
  model: Model, exported for serving under Format-Serving (signature serving_default takes
    serialized tf.Examples, as the TFX Evaluator expects).
  model_run: ModelRun with TensorBoard logs (loss, accuracy and epsilon per epoch).
  privacy_ledger: the ledger, naming the exported model by its digest.

Example:
  trainer = DPTrainer(examples=example_gen.outputs["examples"], module_file="mnist_model.py",
                      dp_config=dp_tfx.DPConfig(noise_multiplier=1.1, batch_size=256, epochs=15))
"""

from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.utils import json_utils

from dp_tfx.components import artifacts
from dp_tfx.components.dp_trainer import executor
from dp_tfx.components.specs import DPTrainerSpec
from dp_tfx.config import DPConfig


class DPTrainer(base_component.BaseComponent):
  """A TFX component that trains with DP-SGD and writes the privacy ledger. See module doc."""

  SPEC_CLASS = DPTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, examples: types.BaseChannel, dp_config: DPConfig,
               module_file: Optional[str] = None, module_path: Optional[str] = None,
               schema: Optional[types.BaseChannel] = None,
               transform_graph: Optional[types.BaseChannel] = None,
               hyperparameters: Optional[types.BaseChannel] = None,
               custom_config: Optional[Dict[str, Any]] = None,
               ledger_history_dir: Optional[str] = None):
    if bool(module_file) == bool(module_path):
      raise ValueError("DPTrainer needs exactly one of module_file or module_path")
    if not isinstance(dp_config, DPConfig):
      raise TypeError(f"dp_config must be a dp_tfx.DPConfig; got {type(dp_config).__name__}")
    spec = DPTrainerSpec(
        examples=examples, schema=schema, transform_graph=transform_graph,
        hyperparameters=hyperparameters, module_file=module_file, module_path=module_path,
        dp_config=dp_config.to_json(), custom_config=json_utils.dumps(custom_config or {}),
        ledger_history_dir=ledger_history_dir,
        model=types.Channel(type=standard_artifacts.Model),
        model_run=types.Channel(type=standard_artifacts.ModelRun),
        privacy_ledger=types.Channel(type=artifacts.PrivacyLedger))
    super().__init__(spec=spec)
