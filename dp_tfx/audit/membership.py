"""Membership inference as an empirical lower bound on epsilon.

An (epsilon, delta)-DP training mechanism limits every test that tries to tell whether one example
was in the training set (Kairouz, Oh and Viswanath 2015, "The composition theorem for differential
privacy"). With "positive" meaning "member":

  TPR <= e^epsilon * FPR + delta    and    TNR <= e^epsilon * FNR + delta,

so an attack that reaches some (TPR, FPR) proves

  epsilon >= log((TPR - delta) / FPR)    and    epsilon >= log((TNR - delta) / FNR).

Jagielski, Ullman and Oprea 2020 ("Auditing differentially private machine learning: how private is
private SGD?") and Nasr et al. 2021 ("Adversary instantiation: lower bounds for differentially
private machine learning") audit DP-SGD this way. The accountant's epsilon is an upper bound and
the audit's a lower bound: an audit above the accountant means the training or its accounting is
broken; an audit far below it says nothing on its own.

Rates are measured on finitely many examples, so the bound uses exact Clopper-Pearson limits, not
point estimates: the lower limit of TPR and the upper limit of FPR, each the end of the two-sided
interval at `confidence`, i.e. one-sided at level (1 - confidence) / 2. For 95%:
TPR >= beta.ppf(0.025, tp, positives - tp + 1) and FPR <= beta.ppf(0.975, fp + 1, negatives - fp).
By the union bound both limits hold together with probability >= confidence. The second direction
needs no further correction: TNR = 1 - FPR and FNR = 1 - TPR, and Clopper-Pearson limits are
symmetric under that swap, so the same event bounds TNR from below by 1 - (FPR upper limit) and FNR
from above by 1 - (TPR lower limit). The reported epsilon, the larger of the two directions and at
least 0, therefore holds with probability >= confidence.

What the counts stand for: the papers above train many models, one trial each. An audit of one
trained model treats its examples as the trials, which is sound only if members and non-members
were drawn alike from one pool before training (a random split), so that inclusion is the only
difference between them; Steinke, Nasr and Jagielski 2023 ("Privacy auditing with one (1) training
run") analyse this setting. Examples from different distributions (say, an official train/test
split) can make an honest model look leaky.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from dp_tfx.checks import is_finite_number, is_int

LOSS_THRESHOLD = "loss_threshold"


def _check_confidence(confidence: float) -> None:
  if not (is_finite_number(confidence) and 0 < confidence < 1):
    raise ValueError(f"confidence must be a number in (0, 1); got {confidence!r}")


def _check_delta(delta: float) -> None:
  if not (is_finite_number(delta) and 0 <= delta < 1):
    raise ValueError(f"delta must be a number in [0, 1); got {delta!r}")


def _fields_of(cls: type, values: Any) -> dict:
  """The dict's entries, refused unless they are exactly the dataclass's fields."""
  if not isinstance(values, Mapping):
    raise ValueError(f"{cls.__name__} needs a dict; got {type(values).__name__}")
  names = {field.name for field in dataclasses.fields(cls)}
  if set(values) != names:
    raise ValueError(f"{cls.__name__} needs exactly the keys {sorted(names)}; got {sorted(values)}")
  return dict(values)


@dataclasses.dataclass(frozen=True)
class AttackCounts:
  """What a membership attack got right and wrong: the evidence behind a bound.

  Attributes:
    true_positives: members the attack called members.
    positives: members attacked.
    false_positives: non-members the attack called members.
    negatives: non-members attacked.
  """

  true_positives: int
  positives: int
  false_positives: int
  negatives: int

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if not is_int(getattr(self, field.name)):
        raise ValueError(
          f"AttackCounts.{field.name} must be an int; got {getattr(self, field.name)!r}"
        )
    if self.positives <= 0 or self.negatives <= 0:
      raise ValueError(f"an attack needs members and non-members; got {self}")
    if not (
      0 <= self.true_positives <= self.positives and 0 <= self.false_positives <= self.negatives
    ):
      raise ValueError(f"attack counts out of range: {self}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> AttackCounts:
    return cls(**_fields_of(cls, values))


@dataclasses.dataclass(frozen=True)
class EpsilonLowerBound:
  """An epsilon that the attack proves, with the rates it was computed from.

  Attributes:
    epsilon: >= 0; the training is not (epsilon', delta)-DP for any epsilon' below it, with
      probability >= `confidence` over the audited examples.
    delta: the delta the bound is stated at.
    confidence: the probability with which the bound holds.
    tpr: true-positive rate, point estimate.
    fpr: false-positive rate, point estimate.
    tpr_interval: two-sided Clopper-Pearson interval of the TPR at `confidence`.
    fpr_interval: two-sided Clopper-Pearson interval of the FPR at `confidence`.
  """

  epsilon: float
  delta: float
  confidence: float
  tpr: float
  fpr: float
  tpr_interval: tuple[float, float]
  fpr_interval: tuple[float, float]

  def to_dict(self) -> dict:
    return {
      **dataclasses.asdict(self),
      "tpr_interval": list(self.tpr_interval),
      "fpr_interval": list(self.fpr_interval),
    }


def _clopper_pearson_limits(successes, trials, confidence: float) -> tuple[np.ndarray, np.ndarray]:
  """Elementwise interval ends, so that one code path serves single counts and threshold sweeps."""
  successes = np.asarray(successes, dtype=float)
  trials = np.asarray(trials, dtype=float)
  tail = (1 - confidence) / 2
  lower = np.where(successes == 0, 0.0, stats.beta.ppf(tail, successes, trials - successes + 1))
  upper = np.where(
    successes == trials, 1.0, stats.beta.ppf(1 - tail, successes + 1, trials - successes)
  )
  return lower, upper


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
  """The exact two-sided binomial confidence interval for a proportion.

  Exact rather than normal-approximate because audits live at the edges (TPR near 1, FPR near 0),
  where the normal approximation is too narrow and would overstate epsilon.

  Args:
    successes: observed successes, 0 <= successes <= trials.
    trials: number of trials, > 0.
    confidence: coverage of the interval; each end is off with probability (1 - confidence) / 2.

  Returns:
    (lower, upper); lower is 0 when successes == 0 and upper is 1 when successes == trials.

  Raises:
    ValueError: for counts out of range or a confidence outside (0, 1).
  """
  if not (is_int(successes) and is_int(trials) and 0 <= successes <= trials and trials > 0):
    raise ValueError(
      f"need integers 0 <= successes <= trials, trials > 0; got {successes!r} of {trials!r}"
    )
  _check_confidence(confidence)
  lower, upper = _clopper_pearson_limits(successes, trials, confidence)
  return float(lower), float(upper)


def _log_ratio_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(numerator > 0, np.log(numerator / denominator), 0.0)


def _epsilon(tpr_lower, fpr_upper, delta: float) -> np.ndarray:
  """The larger of the two directions' bounds (module docstring), elementwise, at least 0.

  Clopper-Pearson keeps FPR's upper limit and TPR's lower limit away from 0 and 1 respectively, so
  both denominators are positive and the bound is finite.
  """
  forward = _log_ratio_or_zero(tpr_lower - delta, fpr_upper)
  backward = _log_ratio_or_zero((1 - fpr_upper) - delta, 1 - tpr_lower)
  return np.maximum(0.0, np.maximum(forward, backward))


def epsilon_lower_bound(
  counts: AttackCounts, delta: float, confidence: float = 0.95
) -> EpsilonLowerBound:
  """The epsilon that an attack's counts prove at `delta`, with probability >= `confidence`.

  Args:
    counts: the attack's outcome on examples it did not use to tune itself.
    delta: the delta of the (epsilon, delta) claim being tested, in [0, 1).
    confidence: probability that the returned bound holds, in (0, 1).

  Returns:
    The bound and the rates behind it.

  Raises:
    ValueError: for a delta or confidence out of range.
  """
  _check_delta(delta)
  tpr_interval = clopper_pearson(counts.true_positives, counts.positives, confidence)
  fpr_interval = clopper_pearson(counts.false_positives, counts.negatives, confidence)
  return EpsilonLowerBound(
    epsilon=float(_epsilon(tpr_interval[0], fpr_interval[1], delta)),
    delta=float(delta),
    confidence=float(confidence),
    tpr=counts.true_positives / counts.positives,
    fpr=counts.false_positives / counts.negatives,
    tpr_interval=tpr_interval,
    fpr_interval=fpr_interval,
  )


@dataclasses.dataclass(frozen=True)
class MembershipAudit:
  """A membership attack's outcome: what it did and what it got right.

  Attributes:
    attack: how examples were called members; LOSS_THRESHOLD.
    threshold: examples with loss <= threshold were called members.
    counts: the outcome on the held-out halves, the only counts a bound may use.
    selection_counts: the outcome on the halves that chose the threshold; reported for
      diagnosis, optimistic by construction.
  """

  attack: str
  threshold: float
  counts: AttackCounts
  selection_counts: AttackCounts

  def __post_init__(self):
    if self.attack != LOSS_THRESHOLD:
      raise ValueError(f"unknown attack {self.attack!r}; known: {LOSS_THRESHOLD!r}")
    if not is_finite_number(self.threshold):
      raise ValueError(f"threshold must be a finite number; got {self.threshold!r}")
    for name in ("counts", "selection_counts"):
      if not isinstance(getattr(self, name), AttackCounts):
        raise ValueError(f"MembershipAudit.{name} must be AttackCounts")

  def lower_bound(self, delta: float, confidence: float = 0.95) -> EpsilonLowerBound:
    return epsilon_lower_bound(self.counts, delta, confidence)

  def to_dict(self) -> dict:
    return {
      "attack": self.attack,
      "threshold": self.threshold,
      "counts": self.counts.to_dict(),
      "selection_counts": self.selection_counts.to_dict(),
    }

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> MembershipAudit:
    fields = _fields_of(cls, values)
    return cls(
      attack=fields["attack"],
      threshold=fields["threshold"],
      counts=AttackCounts.from_dict(fields["counts"]),
      selection_counts=AttackCounts.from_dict(fields["selection_counts"]),
    )


def _losses(name: str, losses: Sequence[float]) -> np.ndarray:
  try:
    values = np.asarray(losses, dtype=float)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be numbers") from None
  if values.ndim != 1 or values.size < 2:
    raise ValueError(
      f"{name} must be a flat sequence of at least 2 losses; got shape {values.shape}"
    )
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{name} contains NaN or infinite losses")
  return values


def _halves(losses: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A random split into a selection half (the smaller, if odd) and a held-out half."""
  order = rng.permutation(losses.size)
  return losses[order[: losses.size // 2]], losses[order[losses.size // 2 :]]


def _called_members(losses: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """How many of `losses` are <= each threshold: the attack's member calls, for every threshold."""
  return np.searchsorted(np.sort(losses), thresholds, side="right")


def _counts_at(threshold: float, members: np.ndarray, non_members: np.ndarray) -> AttackCounts:
  return AttackCounts(
    true_positives=int(_called_members(members, np.array([threshold]))[0]),
    positives=int(members.size),
    false_positives=int(_called_members(non_members, np.array([threshold]))[0]),
    negatives=int(non_members.size),
  )


def loss_threshold_attack(
  member_losses: Sequence[float],
  non_member_losses: Sequence[float],
  delta: float,
  confidence: float = 0.95,
  seed: int = 0,
) -> MembershipAudit:
  """Calls an example a member when the model's loss on it is at most a threshold.

  Training lowers the loss of the examples it saw, more so the less private it is (Yeom et al.
  2018). Each side is split in half at random: the threshold that maximises the epsilon lower
  bound on the first halves is then counted on the second halves.

  Args:
    member_losses: per-example losses of examples that were in the training set.
    non_member_losses: per-example losses of examples from the same distribution that were not.
    delta: the delta at which thresholds are compared, in [0, 1).
    confidence: the confidence at which thresholds are compared, in (0, 1).
    seed: seeds the split, so that an audit can be reproduced.

  Returns:
    The audit; its `lower_bound(delta, confidence)` is the epsilon it proves.

  Raises:
    ValueError: for fewer than 2 losses on a side, NaN or infinite losses, or delta or confidence
      out of range.
  """
  members = _losses("member_losses", member_losses)
  non_members = _losses("non_member_losses", non_member_losses)
  _check_delta(delta)
  _check_confidence(confidence)
  rng = np.random.default_rng(seed)
  selection_members, held_out_members = _halves(members, rng)
  selection_non_members, held_out_non_members = _halves(non_members, rng)

  candidates = np.unique(np.concatenate([selection_members, selection_non_members]))
  true_positives = _called_members(selection_members, candidates)
  false_positives = _called_members(selection_non_members, candidates)
  tpr_lower, _ = _clopper_pearson_limits(true_positives, selection_members.size, confidence)
  _, fpr_upper = _clopper_pearson_limits(false_positives, selection_non_members.size, confidence)
  threshold = float(candidates[np.argmax(_epsilon(tpr_lower, fpr_upper, delta))])

  # The threshold is the best of many tried on the selection halves, so counts there are biased
  # upwards (the maximum of noisy estimates) and would overstate epsilon; only counts on examples
  # that played no part in the choice give a valid confidence statement.
  return MembershipAudit(
    attack=LOSS_THRESHOLD,
    threshold=threshold,
    counts=_counts_at(threshold, held_out_members, held_out_non_members),
    selection_counts=_counts_at(threshold, selection_members, selection_non_members),
  )
