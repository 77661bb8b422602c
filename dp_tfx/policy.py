"""Privacy policy and its decision: bless a model only if what training did is within policy.

The decision computes epsilon from the verified ledger only (invariant 1 of docs/architecture.md)
and fails closed (invariant 6): it starts from "not blessed" and blesses only when every check has
run and passed. An empirical audit, if given, can only add reasons to refuse. Each failed check
adds a readable reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from typing import TYPE_CHECKING, Any, Optional, Union

from dp_tfx import accounting, signing
from dp_tfx.checks import is_finite_number, unknown_fields
from dp_tfx.ledger import PrivacyLedger

if TYPE_CHECKING:
  from dp_tfx.audit.result import PrivacyAudit

ONE_OVER_N = "1/N"


def _policy_error(field: str, allowed: str, value: Any) -> ValueError:
  return ValueError(f"PrivacyPolicy.{field} must be {allowed}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class PrivacyPolicy:
  """What a deployable model must satisfy.

  Attributes:
    max_epsilon: the largest epsilon allowed (at `delta`).
    delta: the delta at which epsilon is computed: a number in (0, 1), or "1/N" for one over the
      ledger's dataset size.
    delta_rule: "1/N" (default) refuses any delta above 1/N, the usual ceiling; None disables it.
    accountant: "pld" (default) or "rdp".
    require_poisson: refuse runs that used shuffled fixed-size batches, whose epsilon is not a
      rigorous bound (default True).
    allow_seeded: accept runs whose noise came from a fixed DPConfig.seed (default False: whoever
      knows the seed can regenerate and subtract the noise).
    max_canary_exposure: if set, the largest exposure (bits) any inserted canary may have; the
      model must then come with a canary audit (the PrivacyAuditor's).
    require_signature: accept only ledgers and ledger histories whose every record is signed
      with the ledger key (see dp_tfx.signing; default False: content hashes and MLMD only).
  """

  max_epsilon: float
  delta: Union[float, str] = ONE_OVER_N
  delta_rule: Optional[str] = ONE_OVER_N
  accountant: str = accounting.PLD
  require_poisson: bool = True
  allow_seeded: bool = False
  max_canary_exposure: Optional[float] = None
  require_signature: bool = False

  def __post_init__(self):
    if not (
      isinstance(self.max_epsilon, (int, float))
      and not isinstance(self.max_epsilon, bool)
      and 0 < self.max_epsilon < math.inf
    ):
      raise _policy_error("max_epsilon", "a finite number > 0", self.max_epsilon)
    if self.delta != ONE_OVER_N and not (
      isinstance(self.delta, (int, float))
      and not isinstance(self.delta, bool)
      and 0 < self.delta < 1
    ):
      raise _policy_error("delta", f'a number in (0, 1) or "{ONE_OVER_N}"', self.delta)
    if self.delta_rule not in (ONE_OVER_N, None):
      raise _policy_error("delta_rule", f'"{ONE_OVER_N}" or null', self.delta_rule)
    if self.accountant not in accounting.ACCOUNTANTS:
      raise _policy_error("accountant", f"one of {accounting.ACCOUNTANTS}", self.accountant)
    if self.max_canary_exposure is not None and not (
      is_finite_number(self.max_canary_exposure) and self.max_canary_exposure >= 0
    ):
      raise _policy_error(
        "max_canary_exposure", "null or a finite number >= 0 (bits)", self.max_canary_exposure
      )
    for flag in ("require_poisson", "allow_seeded", "require_signature"):
      if not isinstance(getattr(self, flag), bool):
        raise _policy_error(flag, "true or false", getattr(self, flag))

  def delta_for(self, dataset_size: int) -> float:
    return 1.0 / dataset_size if self.delta == ONE_OVER_N else float(self.delta)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "PrivacyPolicy":
    try:
      values = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
      raise ValueError(f"the privacy policy is not valid JSON: {error}") from None
    if not isinstance(values, dict):
      raise ValueError("the privacy policy must be a JSON object")
    error = unknown_fields(cls, values, "PrivacyPolicy")
    if error:
      raise error
    return cls(**values)


@dataclasses.dataclass
class PrivacyDecision:
  """The verdict and everything it was based on, for the blessing and the report."""

  blessed: bool = False
  epsilon: Optional[float] = None
  delta: Optional[float] = None
  reasons: list = dataclasses.field(default_factory=list)
  empirical_epsilon_lower_bound: Optional[float] = None

  @property
  def summary(self) -> str:
    if self.blessed:
      return f"BLESSED: epsilon {self.epsilon:.4g} at delta {self.delta:.3g} is within policy"
    return "NOT BLESSED: " + "; ".join(self.reasons or ["no decision was reached"])

  def to_dict(self) -> dict:
    return {
      "blessed": self.blessed,
      "epsilon": self.epsilon,
      "delta": self.delta,
      "empirical_epsilon_lower_bound": self.empirical_epsilon_lower_bound,
      "reasons": list(self.reasons),
      "summary": self.summary,
    }


class PolicyRefusal(ValueError):
  """A run that could never be blessed, refused before it trained (nothing was spent)."""


def decide(
  policy: PrivacyPolicy,
  ledger: PrivacyLedger,
  model_digest: Optional[str] = None,
  upstream_blessed: Optional[bool] = None,
  audit: Optional["PrivacyAudit"] = None,
) -> PrivacyDecision:
  """Checks a verified ledger (and, if given, an empirical audit) against the policy.

  Args:
    policy: the privacy policy.
    ledger: a ledger loaded with PrivacyLedger.load (hash and facts verified).
    model_digest: the digest of the model to be blessed; it must equal the ledger's.
    upstream_blessed: an upstream verdict (e.g. the TFX Evaluator's), if there is one.
    audit: the PrivacyAuditor's measurements on the same model, if there are any. An empirical
      lower bound above the ledger's epsilon means the training or the accounting is broken.

  Returns:
    The decision; `blessed` is True only if every check passed.
  """
  decision = PrivacyDecision()
  reasons = decision.reasons
  if upstream_blessed is False:
    reasons.append("the upstream model_blessing is NOT blessed")
  if model_digest is not None and ledger.model_digest != model_digest:
    reasons.append(
      f"the ledger describes another model (ledger {ledger.model_digest}, model {model_digest})"
    )
  if ledger.noisy_steps <= 0:
    reasons.append("the ledger records no noisy steps")
  _check_training(policy, ledger, decision)
  _check_audit(policy, ledger, audit, decision)
  decision.blessed = not reasons
  return decision


def refuse_unless_blessable(policy: PrivacyPolicy, planned: PrivacyLedger) -> PrivacyDecision:
  """Refuses a run before it trains when the ledger it would leave (`planned`: the history and
  this run's planned steps, see PrivacyLedger.if_trained, or its reservation, see
  PrivacyLedger.with_reservations) could never be blessed.

  `planned` counts the steps other runs reserved and have not taken yet as spent: a refusal
  names those runs, since once they finish (having taken fewer steps, or none) a retry may pass.
  Two runs that reserve at once may refuse each other; that fails closed.

  The checks are the decision's own on what training does (noise, sampling, seed, delta, the
  total epsilon), so a refusal here is exactly a NOT blessed verdict avoided after the fact.
  Checks of the finished model (its digest, the audit, an upstream gate) can only come later.

  Returns:
    The decision on `planned` (blessed).

  Raises:
    PolicyRefusal: with every reason, when it is NOT blessed.
  """
  decision = PrivacyDecision()
  _check_training(policy, planned, decision)
  try:
    verification_key(policy)  # the evaluator will need it; so must this run, to sign
  except ValueError as error:
    decision.reasons.append(str(error))
  if decision.reasons:
    others = planned.reserved.copy()
    this_run = others.pop(planned.run_id, 0)
    where = f" history {planned.history_dir}" if planned.history_dir else ""
    names = ", ".join(sorted(map(str, others)))
    notes = "; ".join(
      f"run {run_id}: {note}"
      for run_id in sorted(others, key=str)
      for note in planned.reserved_notes.get(run_id, [])
    )
    reserving = (
      f", and the {others.total()} reserved by run(s) {names} still training (another "
      f"run reserved steps of the budget: retry when it finishes; {notes})"
      if others
      else ""
    )
    earlier = planned.noisy_steps - this_run - others.total()
    raise PolicyRefusal(
      f"refused before training, nothing was spent: this run ({this_run} noisy steps, after "
      f"the {earlier} already recorded in the ledger{where}{reserving}) could never be "
      "blessed: "
      + "; ".join(decision.reasons)
      + _what_you_can_do(policy, planned, decision, earlier)
    )
  decision.blessed = True
  return decision


def _what_you_can_do(
  policy: PrivacyPolicy, planned: PrivacyLedger, decision: PrivacyDecision, earlier_steps: int
) -> str:
  """The next step for a run refused for its epsilon: the refusal's last sentence."""
  if decision.epsilon is None or not decision.epsilon > policy.max_epsilon:
    return ""
  advice = (
    ". What you can do: train fewer steps or with more noise (DPConfig's epochs or steps, "
    "noise_multiplier), or raise max_epsilon if your privacy policy allows it"
  )
  if earlier_steps > 0 and planned.data_source:
    advice += (
      "; only if no model trained on the earlier runs is ever released: a new budget for the "
      f"data (dp-tfx new-budget --data-source {shlex.quote(planned.data_source)} --reason ...)"
    )
  return advice


def _check_training(
  policy: PrivacyPolicy, ledger: PrivacyLedger, decision: PrivacyDecision
) -> None:
  """Adds a reason for each fact of training that the policy refuses; sets epsilon and delta.

  Only segments that spent steps are judged on their seed, sampling and N (a run refused or
  killed before its first step spent nothing, and must not lock its history out); a pre-check's
  copy counts a pending reservation as steps, so a seeded run about to train is still refused.
  """
  reasons = decision.reasons
  spent = ledger.spent_segments
  if policy.require_poisson and not ledger.rigorous:
    reasons.append(
      "training used shuffled fixed-size batches, so epsilon is not a rigorous bound, "
      "and the policy requires Poisson sampling"
    )
  if not policy.allow_seeded and any(segment.seeded for segment in spent):
    reasons.append(
      "training used a fixed seed (DPConfig.seed), so its noise can be regenerated "
      "by whoever knows the seed; the policy does not allow seeded runs"
    )
  if any(segment.noise_multiplier == 0 for segment in spent):
    reasons.append("training ran without noise (noise_multiplier 0): epsilon is infinite")
  # The total may cover runs on datasets of different sizes: delta must be at most 1/N for each.
  largest = ledger.largest_dataset_size
  delta = policy.delta_for(largest)
  decision.delta = delta
  if policy.delta_rule == ONE_OVER_N and delta > 1.0 / largest:
    reasons.append(
      f"delta {delta:.3g} exceeds 1/N = {1.0 / largest:.3g}"
      + (
        f" (N = {largest}, the largest dataset in the ledger)"
        if largest != ledger.dataset_size
        else ""
      )
    )
  if ledger.noisy_steps > 0:
    result = ledger.epsilon_result(delta, policy.accountant)
    decision.epsilon = result.epsilon
    if not result.epsilon <= policy.max_epsilon:
      reasons.append(
        f"epsilon {result.epsilon:.4g} exceeds the policy's max_epsilon "
        f"{policy.max_epsilon:.4g} (delta {delta:.3g}, {policy.accountant})"
        + (f": {result.reason}" if result.reason else "")
      )


def _check_audit(
  policy: PrivacyPolicy,
  ledger: PrivacyLedger,
  audit: Optional["PrivacyAudit"],
  decision: PrivacyDecision,
) -> None:
  """Adds a reason when the audit contradicts the ledger or a canary is more exposed than
  allowed."""
  reasons = decision.reasons
  if audit is None:
    if policy.max_canary_exposure is not None:
      reasons.append("the policy sets max_canary_exposure, but no canary audit was given")
    return
  if audit.model_digest != ledger.model_digest:
    reasons.append(
      f"the privacy audit measured another model (audit {audit.model_digest}, "
      f"ledger {ledger.model_digest})"
    )
    return
  bound = audit.empirical_epsilon_lower_bound(decision.delta)
  decision.empirical_epsilon_lower_bound = bound
  if decision.epsilon is not None and not bound <= decision.epsilon:
    reasons.append(
      f"the membership-inference audit shows epsilon >= {bound:.3g} "
      f"({100 * audit.confidence:.0f}% confidence), above the {decision.epsilon:.3g} the "
      "ledger accounts for: the training or the accounting is broken"
    )
  if policy.max_canary_exposure is not None:
    exposure = audit.model.max_inserted_exposure()
    if exposure is None:
      reasons.append(
        "the policy sets max_canary_exposure, but the audit measured no inserted canaries"
      )
    elif not exposure <= policy.max_canary_exposure:
      reasons.append(
        f"a canary's exposure {exposure:.3g} bits exceeds the policy's "
        f"max_canary_exposure {policy.max_canary_exposure:g}"
      )


def verification_key(policy: PrivacyPolicy) -> Optional[bytes]:
  """The key every ledger record must be signed with under `policy`; None when it does not ask.

  Raises:
    ValueError: if the policy requires signatures and no ledger key is configured (fail closed).
  """
  if not policy.require_signature:
    return None
  key = signing.configured_key()
  if key is None:
    raise ValueError(
      f"the policy requires signed ledgers, but no ledger key is set here "
      f"({signing.KEY_ENV} or {signing.KEY_FILE_ENV}): nothing can be verified"
    )
  return key
