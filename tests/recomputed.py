"""Audit figures recomputed from the facts an audit records, by a path of their own.

The membership bound is recomputed from the attack counts with scipy's beta quantiles directly
(the two-sided Clopper-Pearson ends), not through dp_tfx.audit.membership; canary exposures from
their recorded ranks (exposure = log2(candidates) - log2(rank)). Tests compare reports with these,
so that a report whose figures do not follow from its own counts fails.
"""

import math

import numpy as np
import pytest
from scipy import stats


def membership_bound(counts: dict, delta: float, confidence: float = 0.95) -> dict:
  """The epsilon lower bound that attack counts prove at `delta`, with the rates behind it."""
  tp, fp = counts["true_positives"], counts["false_positives"]
  positives, negatives = counts["positives"], counts["negatives"]
  tail = (1 - confidence) / 2
  tpr_low = stats.beta.ppf(tail, tp, positives - tp + 1) if tp > 0 else 0.0
  fpr_high = stats.beta.ppf(1 - tail, fp + 1, negatives - fp) if fp < negatives else 1.0
  candidates = [0.0]
  if tpr_low - delta > 0:  # TPR <= e^eps FPR + delta
    candidates.append(math.log((tpr_low - delta) / fpr_high))
  if 1 - fpr_high - delta > 0:  # TNR <= e^eps FNR + delta
    candidates.append(math.log((1 - fpr_high - delta) / (1 - tpr_low)))
  return {
    "epsilon": max(candidates),
    "tpr": tp / positives,
    "fpr": fp / negatives,
    "tpr_low": tpr_low,
    "fpr_high": fpr_high,
  }


def assert_membership_section_follows_from_its_counts(
  section: dict, delta: float, confidence: float = 0.95
) -> None:
  """A report's audit section (dp_tfx.report): rates, interval ends and bound from its counts."""
  expected = membership_bound(section["counts"], delta, confidence)
  bound = section["lower_bound"]
  assert bound["delta"] == pytest.approx(delta) and bound["confidence"] == confidence
  assert bound["tpr"] == pytest.approx(expected["tpr"], abs=1e-12)
  assert bound["fpr"] == pytest.approx(expected["fpr"], abs=1e-12)
  assert bound["tpr_interval"][0] == pytest.approx(expected["tpr_low"], abs=1e-12)
  assert bound["fpr_interval"][1] == pytest.approx(expected["fpr_high"], abs=1e-12)
  assert section["empirical_epsilon_lower_bound"] == pytest.approx(expected["epsilon"], abs=1e-12)


def assert_exposures_follow_from_their_ranks(section: dict, canaries, digits: int) -> None:
  """Every canary of `canaries` ([(secret, repetitions)], from the canary file) ranked exactly
  among all 10**digits candidates, its exposure from its rank, and the per-repetitions means."""
  measured = section["canaries"]
  assert sorted((c["secret"], c["repetitions"]) for c in measured) == sorted(canaries)
  for canary in measured:
    assert canary["method"] == "exact" and canary["candidates_scored"] == 10**digits
    assert 1 <= canary["rank"] <= 10**digits
    assert canary["exposure"] == pytest.approx(
      digits * math.log2(10) - math.log2(canary["rank"]), abs=1e-9
    )
  means = {
    str(r): float(np.mean([c["exposure"] for c in measured if c["repetitions"] == r]))
    for r in {c["repetitions"] for c in measured}
  }
  assert section["canary_exposure"] == pytest.approx(means, abs=1e-9)
