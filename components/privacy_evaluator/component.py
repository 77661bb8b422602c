"""PrivacyEvaluator: computes epsilon from the DPTrainer's ledger and blesses only within policy.

Inputs:
  model: the Model the DPTrainer exported (its digest must match the ledger's).
  privacy_ledger: the DPTrainer's ledger (its hash is verified): a snapshot of the ledger history
    when the run ended. Epsilon is that of every run in the history at evaluation time (each
    segment file's hash verified; every segment of the snapshot must still be there, unshortened);
    a ledger that names no history is judged on its own.
  model_blessing: optional upstream blessing (e.g. the TFX Evaluator's); NOT blessed upstream
    means NOT blessed here, so accuracy and privacy gates combine.
  privacy_audit: optional PrivacyAuditor measurements of the same model. If the empirical
    epsilon lower bound exceeds the ledger's epsilon, training or accounting is broken: NOT
    blessed. The policy's max_canary_exposure is checked against it.
  earlier_privacy_ledgers: optional, every earlier DPTrainer run's PrivacyLedger artifact (use
    `earlier_runs.earlier_privacy_ledgers()`, a Resolver). Every segment MLMD recorded for any of
    them, in whatever history directory, must be in this run's ledger history, unchanged and
    unshortened: a segment deleted before this run opened the history, or left behind in
    another history, is caught, which this run's snapshot alone cannot tell.
Parameters:
  privacy_policy: a dp_tfx.policy.PrivacyPolicy, validated when the pipeline is built.
Outputs:
  blessing: ModelBlessing with custom properties blessed (1/0, what Pusher reads), epsilon, delta,
    reason, current_model and current_model_id; and a BLESSED or NOT_BLESSED file.
  privacy_report: report.json, epsilon.png, summary.txt (and exposure.png with canaries).

Example:
  earlier = earlier_runs.earlier_privacy_ledgers()  # also the DPTrainer's earlier_privacy_ledgers
  evaluator = PrivacyEvaluator(model=trainer.outputs["model"],
                               privacy_ledger=trainer.outputs["privacy_ledger"],
                               privacy_policy=PrivacyPolicy(max_epsilon=3.0, delta=1e-5),
                               earlier_privacy_ledgers=earlier.outputs["ledgers"])
  pusher = Pusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                  push_destination=...)
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts

from dp_tfx.components import artifacts
from dp_tfx.components.privacy_evaluator import executor
from dp_tfx.components.specs import PrivacyEvaluatorSpec
from dp_tfx.policy import PrivacyPolicy


class PrivacyEvaluator(base_component.BaseComponent):
  """A TFX component that gates deployment on the privacy actually spent. See module doc."""

  SPEC_CLASS = PrivacyEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(
    self,
    model: types.BaseChannel,
    privacy_ledger: types.BaseChannel,
    privacy_policy: PrivacyPolicy,
    model_blessing: Optional[types.BaseChannel] = None,
    privacy_audit: Optional[types.BaseChannel] = None,
    earlier_privacy_ledgers: Optional[types.BaseChannel] = None,
    poisson_batches: Optional[types.BaseChannel] = None,
  ):
    if not isinstance(privacy_policy, PrivacyPolicy):
      raise TypeError(
        f"privacy_policy must be a dp_tfx.policy.PrivacyPolicy; got {type(privacy_policy).__name__}"
      )
    spec = PrivacyEvaluatorSpec(
      model=model,
      privacy_ledger=privacy_ledger,
      model_blessing=model_blessing,
      privacy_audit=privacy_audit,
      earlier_privacy_ledgers=earlier_privacy_ledgers,
      poisson_batches=poisson_batches,
      privacy_policy=privacy_policy.to_json(),
      blessing=types.Channel(type=standard_artifacts.ModelBlessing),
      privacy_report=types.Channel(type=artifacts.PrivacyReport),
    )
    super().__init__(spec=spec)
