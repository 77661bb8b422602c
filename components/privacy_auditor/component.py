"""PrivacyAuditor: measures what a trained model gives away, for the privacy report and the gate.

An epsilon from the ledger is an upper bound that is proved, not observed. The auditor observes:
a loss-threshold membership-inference attack turns its true and false positive rates into an
empirical epsilon lower bound (Clopper-Pearson, 95%), and canaries inserted into the training data
get an exposure in bits (Carlini et al., "The Secret Sharer"). The PrivacyEvaluator refuses a
model whose lower bound exceeds the ledger's epsilon: then training or accounting is broken.

Inputs:
  examples: the Examples the DPTrainer trained on; members are drawn from its train_split,
    non-members from its eval_split.
  model: the DPTrainer's Model.
  control_model: optional; a non-private control trained the same way (e.g. a TFX Trainer with
    the module's run_fn), measured alike for comparison. It is never deployed.
  schema, transform_graph, hyperparameters: optional; give what the DPTrainer got, so that the
    module decodes and scores examples exactly as it trained.
Parameters:
  module_file or module_path: the DPTrainer's user module. The auditor uses feature_spec, decode
    and compile_kwargs (for the per-example loss); canary_examples(texts, context) -> serialized
    tf.Examples when there are canaries; held_out_metrics(labels, logits, context) -> dict, if
    the module has it.
  custom_config: the hyperparameters handed to the module (as for the DPTrainer).
  canary_file: the canaries.json written with the training data (dp_tfx.audit.canaries), if any.
    Each canary must be in the train split exactly as often as the file says (else the audit
    fails); the copies are left out of the membership attack.
  max_examples: members and non-members attacked, each (default 1000, capped by the splits).
  delta: the delta at which the attack's threshold is chosen (default 1/N, N the training set).
  train_split, eval_split: the DPTrainer's (default "train" and "eval").
Outputs:
  privacy_audit: audit.json (dp_tfx.audit.result.PrivacyAudit) and exposure.png.

Example:
  auditor = PrivacyAuditor(examples=example_gen.outputs["examples"],
                           model=trainer.outputs["model"], module_file="lm_model.py",
                           canary_file="data/canaries.json")
  evaluator = PrivacyEvaluator(..., privacy_audit=auditor.outputs["privacy_audit"])
"""

from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.utils import json_utils

from dp_tfx.components import artifacts
from dp_tfx.components.model_io import EVAL_SPLIT, TRAIN_SPLIT
from dp_tfx.components.privacy_auditor import executor
from dp_tfx.components.specs import PrivacyAuditorSpec


class PrivacyAuditor(base_component.BaseComponent):
  """A TFX component that audits a trained model's privacy empirically. See module doc."""

  SPEC_CLASS = PrivacyAuditorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(
    self,
    examples: types.BaseChannel,
    model: types.BaseChannel,
    module_file: Optional[str] = None,
    module_path: Optional[str] = None,
    control_model: Optional[types.BaseChannel] = None,
    schema: Optional[types.BaseChannel] = None,
    transform_graph: Optional[types.BaseChannel] = None,
    hyperparameters: Optional[types.BaseChannel] = None,
    custom_config: Optional[Dict[str, Any]] = None,
    canary_file: Optional[str] = None,
    max_examples: Optional[int] = None,
    delta: Optional[float] = None,
    train_split: str = TRAIN_SPLIT,
    eval_split: str = EVAL_SPLIT,
  ):
    if bool(module_file) == bool(module_path):
      raise ValueError("PrivacyAuditor needs exactly one of module_file or module_path")
    if max_examples is not None and max_examples < 4:
      raise ValueError(f"max_examples must be at least 4; got {max_examples}")
    if delta is not None and not 0 < delta < 1:
      raise ValueError(f"delta must be in (0, 1); got {delta}")
    spec = PrivacyAuditorSpec(
      examples=examples,
      model=model,
      control_model=control_model,
      schema=schema,
      transform_graph=transform_graph,
      hyperparameters=hyperparameters,
      module_file=module_file,
      module_path=module_path,
      custom_config=json_utils.dumps(custom_config or {}),
      canary_file=canary_file,
      max_examples=max_examples,
      delta=delta,
      train_split=train_split,
      eval_split=eval_split,
      privacy_audit=types.Channel(type=artifacts.PrivacyAudit),
    )
    super().__init__(spec=spec)
