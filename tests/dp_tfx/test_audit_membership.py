"""The membership audit's bound: exact intervals, values by hand, and its statistical promise."""

import math

import numpy as np
import pytest
from scipy import stats

from dp_tfx.audit import membership
from dp_tfx.audit.membership import AttackCounts

ALPHA = 0.05  # confidence 0.95: each one-sided limit is off with probability ALPHA / 2


def perfect_separation_epsilon(n, delta):
  """Closed form for tp = n of n, fp = 0 of n: TPR >= (alpha/2)^(1/n), FPR <= 1 - that."""
  tpr_lower = (ALPHA / 2) ** (1 / n)
  return math.log((tpr_lower - delta) / (1 - tpr_lower))


@pytest.mark.parametrize("trials", [1, 10, 1000])
def test_clopper_pearson_closed_forms_at_the_edges(trials):
  assert membership.clopper_pearson(0, trials) == pytest.approx(
    (0.0, 1 - (ALPHA / 2) ** (1 / trials)), rel=1e-12
  )
  assert membership.clopper_pearson(trials, trials) == pytest.approx(
    ((ALPHA / 2) ** (1 / trials), 1.0), rel=1e-12
  )


def test_clopper_pearson_matches_scipy_binomtest():
  reference = stats.binomtest(7, 20).proportion_ci(confidence_level=0.9, method="exact")
  assert membership.clopper_pearson(7, 20, confidence=0.9) == pytest.approx(
    (reference.low, reference.high), rel=1e-12
  )


@pytest.mark.parametrize("delta, expected", [(0.0, 3.24202), (1e-5, 3.24200)])
def test_bound_by_hand_for_tpr_one_half_fpr_one_percent(delta, expected):
  # tp = 500 of 1000, fp = 10 of 1000, confidence 0.95:
  #   TPR lower = beta.ppf(0.025, 500, 501) = 0.4685492,
  #   FPR upper = beta.ppf(0.975, 11, 990) = 0.0183132;
  #   log((0.4685492 - delta) / 0.0183132) = 3.24202 (delta 0) and 3.24200 (delta 1e-5), while the
  #   other direction gives only log((1 - 0.0183132) / (1 - 0.4685492)) = 0.6137.
  bound = membership.epsilon_lower_bound(AttackCounts(500, 1000, 10, 1000), delta=delta)
  assert bound.epsilon == pytest.approx(expected, abs=5e-6)
  assert bound.epsilon < math.log(0.5 / 0.01)  # the point estimate, 3.912
  assert bound.tpr_interval[0] == pytest.approx(0.4685492, abs=1e-7)
  assert bound.fpr_interval[1] == pytest.approx(0.0183132, abs=1e-7)
  assert (bound.tpr, bound.fpr) == (0.5, 0.01)


@pytest.mark.parametrize("n", [10, 100, 1000])
@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_perfect_separation_closed_form(n, delta):
  bound = membership.epsilon_lower_bound(AttackCounts(n, n, 0, n), delta=delta)
  assert bound.epsilon == pytest.approx(perfect_separation_epsilon(n, delta), rel=1e-9)


def test_more_evidence_never_lowers_the_bound_on_perfect_separation():
  bounds = [
    membership.epsilon_lower_bound(AttackCounts(n, n, 0, n), delta=1e-5).epsilon
    for n in (3, 30, 300, 3000, 30000)
  ]
  assert bounds == sorted(bounds)
  assert bounds[0] < bounds[-1]


def test_the_bound_never_exceeds_what_the_counts_support():
  rng = np.random.default_rng(7)
  for _ in range(500):
    positives, negatives = rng.integers(1, 2000, size=2)
    counts = AttackCounts(
      int(rng.integers(0, positives + 1)),
      int(positives),
      int(rng.integers(0, negatives + 1)),
      int(negatives),
    )
    delta = float(rng.choice([0.0, 1e-5, 1e-2]))
    bound = membership.epsilon_lower_bound(counts, delta=delta)
    tpr, fpr = bound.tpr, bound.fpr
    assert 0 <= bound.epsilon < math.inf
    if tpr <= fpr + delta:  # then TNR - delta <= FNR as well: no direction proves anything
      assert bound.epsilon == 0
    elif 0 < fpr and tpr < 1:
      point = max(math.log((tpr - delta) / fpr), math.log((1 - fpr - delta) / (1 - tpr)))
      assert bound.epsilon <= point


def test_two_losses_a_side_is_enough_to_run():
  audit = membership.loss_threshold_attack([0.1, 0.2], [0.9, 1.0], delta=0.0)
  assert (audit.counts.positives, audit.counts.negatives) == (1, 1)


def test_same_distribution_proves_nothing():
  # Members and non-members are exchangeable, so each seed's bound is > 0 with probability at most
  # 5% (the confidence); over 20 seeds we allow 2, which a correct bound exceeds with
  # probability < 8% even at exactly 5% each (in practice the chance is far smaller).
  positive = 0
  for seed in range(20):
    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 0.5, size=4000)
    audit = membership.loss_threshold_attack(losses[:2000], losses[2000:], delta=1e-5, seed=seed)
    positive += audit.lower_bound(1e-5).epsilon > 0
  assert positive <= 2


def test_strong_separation_reaches_the_closed_form_of_the_held_out_half():
  rng = np.random.default_rng(0)
  members = np.abs(rng.normal(0.0, 0.01, size=2000))
  non_members = rng.normal(2.0, 0.5, size=2000)
  audit = membership.loss_threshold_attack(members, non_members, delta=1e-5)
  assert (audit.counts.positives, audit.counts.negatives) == (1000, 1000)
  best_possible = perfect_separation_epsilon(1000, 1e-5)  # 5.60
  assert best_possible - 0.2 <= audit.lower_bound(1e-5).epsilon <= best_possible + 1e-9
  assert audit.counts.false_positives == 0 and audit.threshold < non_members.min()


def test_the_halves_partition_the_examples_at_the_chosen_threshold():
  rng = np.random.default_rng(5)
  members = rng.normal(0.8, 0.3, size=101)
  non_members = rng.normal(1.0, 0.3, size=99)
  audit = membership.loss_threshold_attack(members, non_members, delta=0.0, seed=3)
  held_out, selection = audit.counts, audit.selection_counts
  assert (selection.positives, held_out.positives) == (50, 51)  # held out: the larger half
  assert (selection.negatives, held_out.negatives) == (49, 50)
  assert held_out.true_positives + selection.true_positives == np.sum(members <= audit.threshold)
  assert held_out.false_positives + selection.false_positives == np.sum(
    non_members <= audit.threshold
  )


def test_round_trips_through_dicts():
  counts = AttackCounts(480, 500, 3, 500)
  assert AttackCounts.from_dict(counts.to_dict()) == counts
  audit = membership.loss_threshold_attack(np.arange(10.0), np.arange(5.0, 15.0), delta=1e-5)
  assert membership.MembershipAudit.from_dict(audit.to_dict()) == audit
  bound = audit.lower_bound(1e-5).to_dict()
  assert isinstance(bound["tpr_interval"], list) and len(bound["fpr_interval"]) == 2


@pytest.mark.parametrize(
  "values",
  [
    {"true_positives": 5, "positives": 4, "false_positives": 0, "negatives": 4},
    {"true_positives": 0, "positives": 4, "false_positives": -1, "negatives": 4},
    {"true_positives": 0, "positives": 0, "false_positives": 0, "negatives": 4},
    {"true_positives": 1.0, "positives": 4, "false_positives": 0, "negatives": 4},
    {"true_positives": True, "positives": 4, "false_positives": 0, "negatives": 4},
    {"true_positives": 1, "positives": 4, "false_positives": 0},
    {"true_positives": 1, "positives": 4, "false_positives": 0, "negatives": 4, "extra": 1},
    [1, 4, 0, 4],
  ],
)
def test_bad_counts_are_refused(values):
  with pytest.raises(ValueError):
    AttackCounts.from_dict(values)


def test_bad_audit_dicts_are_refused():
  good = membership.loss_threshold_attack([0.1, 0.2], [0.9, 1.0], delta=0.0).to_dict()
  for change in (
    {"attack": "shadow_models"},
    {"threshold": float("nan")},
    {"counts": {"true_positives": 2, "positives": 1, "false_positives": 0, "negatives": 1}},
  ):
    with pytest.raises(ValueError):
      membership.MembershipAudit.from_dict({**good, **change})


@pytest.mark.parametrize(
  "members, non_members, delta",
  [
    ([0.1], [0.5, 0.6], 0.0),
    ([0.1, 0.2], [0.5], 0.0),
    ([0.1, float("nan")], [0.5, 0.6], 0.0),
    ([0.1, 0.2], [0.5, float("inf")], 0.0),
    ([0.1, 0.2], [0.5, 0.6], 1.0),
    ([0.1, 0.2], [0.5, 0.6], -1e-5),
    ([[0.1, 0.2]], [0.5, 0.6], 0.0),
    (["a", "b"], [0.5, 0.6], 0.0),
  ],
)
def test_bad_attack_inputs_are_refused(members, non_members, delta):
  with pytest.raises(ValueError):
    membership.loss_threshold_attack(members, non_members, delta=delta)


@pytest.mark.parametrize(
  "successes, trials, confidence",
  [(3, 2, 0.95), (-1, 2, 0.95), (0, 0, 0.95), (1, 2, 1.0), (1, 2, 0.0), (1.0, 2, 0.95)],
)
def test_bad_interval_inputs_are_refused(successes, trials, confidence):
  with pytest.raises(ValueError):
    membership.clopper_pearson(successes, trials, confidence)
