"""Component specs and their keys, defined once (as TFX's standard_component_specs does).

Executors and tests index input_dict / output_dict / exec_properties only through these keys.
"""

from tfx.types import standard_artifacts
from tfx.types import standard_component_specs as std
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.types.system_executions import Evaluate, Process, Train

from dp_tfx.components import artifacts

# TFX's own keys, re-exported so that our code has one place to look.
EXAMPLES_KEY = std.EXAMPLES_KEY
SCHEMA_KEY = std.SCHEMA_KEY
TRANSFORM_GRAPH_KEY = std.TRANSFORM_GRAPH_KEY
HYPERPARAMETERS_KEY = std.HYPERPARAMETERS_KEY
MODULE_FILE_KEY = std.MODULE_FILE_KEY
MODULE_PATH_KEY = std.MODULE_PATH_KEY
CUSTOM_CONFIG_KEY = std.CUSTOM_CONFIG_KEY
MODEL_KEY = std.MODEL_KEY
MODEL_RUN_KEY = std.MODEL_RUN_KEY
MODEL_BLESSING_KEY = std.MODEL_BLESSING_KEY
BLESSING_KEY = std.BLESSING_KEY

# Ours.
DP_CONFIG_KEY = "dp_config"
PRIVACY_LEDGER_KEY = "privacy_ledger"
EARLIER_PRIVACY_LEDGERS_KEY = "earlier_privacy_ledgers"
PRIVACY_POLICY_KEY = "privacy_policy"
PRIVACY_REPORT_KEY = "privacy_report"
LEDGER_HISTORY_DIR_KEY = "ledger_history_dir"
DATA_SOURCE_KEY = "data_source"
BUDGET_ROOT_KEY = "budget_root"
PRIVACY_AUDIT_KEY = "privacy_audit"
CONTROL_MODEL_KEY = "control_model"
CANARY_FILE_KEY = "canary_file"
MAX_EXAMPLES_KEY = "max_examples"
DELTA_KEY = "delta"
POISSON_BATCHES_KEY = "poisson_batches"
FIRST_STEP_KEY = "first_step"
LAST_STEP_KEY = "last_step"
STEPS_PER_SHARD_KEY = "steps_per_shard"
# Which splits of the Examples are trained on (members, for the auditor) and evaluated on
# (non-members), like the splits of TFX Trainer's train_args / eval_args.
TRAIN_SPLIT_KEY = "train_split"
EVAL_SPLIT_KEY = "eval_split"

# Optional inputs handed to a user module through its context (see dp_trainer.executor).
_MODULE_CONTEXT_INPUTS = {
  SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema, optional=True),
  TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph, optional=True),
  HYPERPARAMETERS_KEY: ChannelParameter(type=standard_artifacts.HyperParameters, optional=True),
}


# Every earlier DPTrainer run's ledger artifact in MLMD (possibly none): what they recorded must
# be in the ledger history the run counts (see earlier_runs.py).
_EARLIER_RUNS_INPUTS = {
  EARLIER_PRIVACY_LEDGERS_KEY: ChannelParameter(type=artifacts.PrivacyLedger, optional=True),
}


class DPTrainerSpec(ComponentSpec):
  """DPTrainer: trains a user module's Keras model with DP-SGD on the Examples (or on
  PoissonBatchGen's batches); outputs the model, its TensorBoard run and the privacy ledger."""

  PARAMETERS = {
    MODULE_FILE_KEY: ExecutionParameter(type=str, optional=True),
    MODULE_PATH_KEY: ExecutionParameter(type=str, optional=True),
    DP_CONFIG_KEY: ExecutionParameter(type=str),
    CUSTOM_CONFIG_KEY: ExecutionParameter(type=str, optional=True),
    LEDGER_HISTORY_DIR_KEY: ExecutionParameter(type=str, optional=True),
    DATA_SOURCE_KEY: ExecutionParameter(type=str, optional=True),
    BUDGET_ROOT_KEY: ExecutionParameter(type=str, optional=True),
    PRIVACY_POLICY_KEY: ExecutionParameter(type=str, optional=True),
    TRAIN_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
    EVAL_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
  }
  INPUTS = {
    EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    POISSON_BATCHES_KEY: ChannelParameter(type=artifacts.PoissonBatches, optional=True),
    **_MODULE_CONTEXT_INPUTS,
    **_EARLIER_RUNS_INPUTS,
  }
  OUTPUTS = {
    MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    MODEL_RUN_KEY: ChannelParameter(type=standard_artifacts.ModelRun),
    PRIVACY_LEDGER_KEY: ChannelParameter(type=artifacts.PrivacyLedger),
  }
  TYPE_ANNOTATION = Train


class PoissonBatchGenSpec(ComponentSpec):
  """PoissonBatchGen: draws every step's Poisson sample of the Examples on Beam, for training
  on data larger than memory."""

  PARAMETERS = {
    DP_CONFIG_KEY: ExecutionParameter(type=str),
    TRAIN_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
    FIRST_STEP_KEY: ExecutionParameter(type=int, optional=True),
    LAST_STEP_KEY: ExecutionParameter(type=int, optional=True),
    STEPS_PER_SHARD_KEY: ExecutionParameter(type=int, optional=True),
  }
  INPUTS = {
    EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
  }
  OUTPUTS = {
    POISSON_BATCHES_KEY: ChannelParameter(type=artifacts.PoissonBatches),
  }
  TYPE_ANNOTATION = Process


class PrivacyAuditorSpec(ComponentSpec):
  """PrivacyAuditor: measures what the exported model gives away (membership inference,
  canary exposure), for the DP model and an optional non-private control."""

  PARAMETERS = {
    MODULE_FILE_KEY: ExecutionParameter(type=str, optional=True),
    MODULE_PATH_KEY: ExecutionParameter(type=str, optional=True),
    CUSTOM_CONFIG_KEY: ExecutionParameter(type=str, optional=True),
    CANARY_FILE_KEY: ExecutionParameter(type=str, optional=True),
    MAX_EXAMPLES_KEY: ExecutionParameter(type=int, optional=True),
    DELTA_KEY: ExecutionParameter(type=float, optional=True),
    TRAIN_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
    EVAL_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
  }
  INPUTS = {
    EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    CONTROL_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
    # What the DPTrainer's module got, so that it decodes and scores exactly as it trained.
    **_MODULE_CONTEXT_INPUTS,
  }
  OUTPUTS = {
    PRIVACY_AUDIT_KEY: ChannelParameter(type=artifacts.PrivacyAudit),
  }
  TYPE_ANNOTATION = Evaluate


class PrivacyEvaluatorSpec(ComponentSpec):
  """PrivacyEvaluator: computes epsilon from the verified ledger history and blesses the model
  only if it meets the privacy policy; writes the blessing and the privacy report."""

  PARAMETERS = {
    PRIVACY_POLICY_KEY: ExecutionParameter(type=str),
  }
  INPUTS = {
    MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    PRIVACY_LEDGER_KEY: ChannelParameter(type=artifacts.PrivacyLedger),
    MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    PRIVACY_AUDIT_KEY: ChannelParameter(type=artifacts.PrivacyAudit, optional=True),
    POISSON_BATCHES_KEY: ChannelParameter(type=artifacts.PoissonBatches, optional=True),
    **_EARLIER_RUNS_INPUTS,
  }
  OUTPUTS = {
    BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
    PRIVACY_REPORT_KEY: ChannelParameter(type=artifacts.PrivacyReport),
  }
  TYPE_ANNOTATION = Evaluate
