"""DPTrainer: trains a Keras model with DP-SGD and records a privacy ledger.

Inputs:
  examples: Examples with a train and an eval split (train_split, eval_split) of tf.Examples
    (one training example = one privacy unit).
  schema, transform_graph, hyperparameters: optional, handed to the user module.
  earlier_privacy_ledgers: optional, every earlier DPTrainer run's PrivacyLedger artifact (use
    `earlier_runs.earlier_privacy_ledgers()`, a Resolver, as the PrivacyEvaluator does). Before
    anything is read or trained, every segment MLMD recorded for them must be in the ledger
    history, unchanged and unshortened (see components/earlier_runs.py); else the component
    fails and nothing is spent: the PrivacyEvaluator would refuse the run anyway.
Parameters:
  module_file or module_path: the user module (see `components/user_module.py` for the
    functions it provides: feature_spec, decode, build_model, compile_kwargs).
  dp_config: a dp_tfx.DPConfig (clip, noise or target epsilon, batch, epochs or steps, ...).
  custom_config: a dict of hyperparameters for the user module.
  ledger_history_dir: a directory that outlives pipeline runs: the privacy budget of one data
    source. Every run records its steps there, each in segment files of its own (so concurrent
    runs never lose each other's steps), and every run recorded there composes with every other,
    whatever data it had: a rerun, a retry after a crash, or a run on changed, added or dropped
    examples adds to what earlier runs spent. Only data that shares no privacy unit with it may
    get a history of its own. Default: the data source's budget under `budget_root`.
  data_source: the name of the data source (default: "pipeline NAME"): it names the budget
    under `budget_root`, so a new pipeline root or output directory keeps composing with it.
    Data already trained on under another name of the same budget root is refused.
  budget_root: where the data sources' budgets live (default: $DP_TFX_BUDGET_ROOT, else the
    user's state directory ~/.local/state/dp_tfx/budgets); any tf.io.gfile URI, e.g. an object
    store a team shares. Starting a new budget for a source is explicit: `dp-tfx new-budget`.
  privacy_policy: the PrivacyEvaluator's policy, if the trainer should refuse, before its first
    step, a run the evaluator could never bless (no noise, a delta above 1/N, shuffled batches
    under a Poisson policy, or an epsilon over max_epsilon once added to the ledger history).
    The refusal fails the component with the reasons; nothing is recorded or spent.
  train_split, eval_split: the splits of `examples` to train on (the privacy unit's dataset, N)
    and to evaluate on (default "train" and "eval", as ExampleGens name them).
  poisson_batches: optional, a PoissonBatchGen's output for the same examples and dp_config:
    the trainer then reads each step's sample from it when the step comes (memory: a few steps,
    whatever N is) instead of loading the train split; the batches must have been drawn for
    this run's plan (N, q, steps, physical batch), else the run is refused before its first
    step. Without it the train split is read into memory and sampled there (fine for data that
    fits; the same privacy and ledger facts).
Outputs:
  model: Model, exported for serving under Format-Serving (signature serving_default takes
    serialized tf.Examples, as the TFX Evaluator expects).
  model_run: ModelRun with TensorBoard logs (loss, accuracy and epsilon per epoch).
  privacy_ledger: the ledger, naming the exported model by its digest: a snapshot of the ledger
    history when training ended (every run in it), naming the history, where the
    PrivacyEvaluator judges the total as it is then.

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
from dp_tfx.components.model_io import EVAL_SPLIT, TRAIN_SPLIT
from dp_tfx.components.user_module import check_module_functions
from dp_tfx.components.specs import DPTrainerSpec
from dp_tfx.config import DPConfig
from dp_tfx.policy import PrivacyPolicy


class DPTrainer(base_component.BaseComponent):
  """A TFX component that trains with DP-SGD and writes the privacy ledger. See module doc."""

  SPEC_CLASS = DPTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(
    self,
    examples: types.BaseChannel,
    dp_config: DPConfig,
    module_file: Optional[str] = None,
    module_path: Optional[str] = None,
    schema: Optional[types.BaseChannel] = None,
    transform_graph: Optional[types.BaseChannel] = None,
    hyperparameters: Optional[types.BaseChannel] = None,
    custom_config: Optional[Dict[str, Any]] = None,
    ledger_history_dir: Optional[str] = None,
    data_source: Optional[str] = None,
    budget_root: Optional[str] = None,
    privacy_policy: Optional[PrivacyPolicy] = None,
    train_split: str = TRAIN_SPLIT,
    eval_split: str = EVAL_SPLIT,
    earlier_privacy_ledgers: Optional[types.BaseChannel] = None,
    poisson_batches: Optional[types.BaseChannel] = None,
  ):
    if bool(module_file) == bool(module_path):
      raise ValueError("DPTrainer needs exactly one of module_file or module_path")
    if not isinstance(dp_config, DPConfig):
      raise TypeError(f"dp_config must be a dp_tfx.DPConfig; got {type(dp_config).__name__}")
    if privacy_policy is not None:
      check_config_within_policy(dp_config, privacy_policy)
    check_module_functions(module_file, module_path)
    spec = DPTrainerSpec(
      examples=examples,
      schema=schema,
      transform_graph=transform_graph,
      hyperparameters=hyperparameters,
      earlier_privacy_ledgers=earlier_privacy_ledgers,
      poisson_batches=poisson_batches,
      module_file=module_file,
      module_path=module_path,
      dp_config=dp_config.to_json(),
      custom_config=json_utils.dumps(custom_config or {}),
      ledger_history_dir=ledger_history_dir,
      data_source=data_source,
      budget_root=budget_root,
      privacy_policy=privacy_policy.to_json() if privacy_policy is not None else None,
      train_split=train_split,
      eval_split=eval_split,
      model=types.Channel(type=standard_artifacts.Model),
      model_run=types.Channel(type=standard_artifacts.ModelRun),
      privacy_ledger=types.Channel(type=artifacts.PrivacyLedger),
    )
    super().__init__(spec=spec)


def check_config_within_policy(dp_config: DPConfig, policy: PrivacyPolicy) -> None:
  """Refuses, when the pipeline is built, a config whose own target the policy already refuses.

  Raises:
    ValueError: for a target_epsilon above the policy's max_epsilon.
  """
  if dp_config.target_epsilon is not None and dp_config.target_epsilon > policy.max_epsilon:
    raise ValueError(
      f"DPConfig.target_epsilon ({dp_config.target_epsilon:g}) is above the "
      f"privacy policy's max_epsilon ({policy.max_epsilon:g}): such a model "
      "would never be blessed"
    )
