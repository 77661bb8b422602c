"""PrivacyEvaluator executor with a PrivacyAuditor's audit: reported, and not blessed where the
audit contradicts the ledger, a canary's exposure exceeds the policy, or it measured another
model."""

import dataclasses
import math

import pytest

from dp_tfx.audit import AttackCounts, Exposure, MembershipAudit
from dp_tfx.audit.result import CanaryResult, ModelAudit, PrivacyAudit
from dp_tfx.components import testing
from dp_tfx.policy import PrivacyPolicy, decide
from tests.components.privacy_evaluator_cases import POLICY, one_run_ledger


def _audit(true_positives, false_positives, exposures=None, attacked=1000):
  """An audit whose attack called `true_positives` of `attacked` members and `false_positives` of
  `attacked` non-members members; `exposures` maps repetitions to one canary's exposure."""
  counts = AttackCounts(
    true_positives=true_positives,
    positives=attacked,
    false_positives=false_positives,
    negatives=attacked,
  )
  canaries = [
    CanaryResult(
      repetitions=r,
      exposure=Exposure(
        secret=f"{i:05d}", exposure=e, method="exact", rank=2 ** (16.6 - e), candidates_scored=10**5
      ),
    )
    for i, (r, e) in enumerate((exposures or {}).items())
  ]
  return PrivacyAudit(
    model_digest="set by the testing helper",
    delta=1e-5,
    confidence=0.95,
    model=ModelAudit(MembershipAudit("loss_threshold", 0.5, counts, counts), canaries=canaries),
    canary_format={"prefix": "my pin is ", "digits": 5},
  )


def test_an_audit_consistent_with_the_ledger_is_reported_and_blessed(tmp_path):
  # TPR 0.52 vs FPR 0.48 supports no epsilon at all: the bound is 0.
  audit = _audit(520, 480, exposures={0: 1.2, 1: 1.5, 16: 2.0})
  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, audit=audit)
  testing.assert_blessed(result)
  section = result.report["audit"]
  assert section["empirical_epsilon_lower_bound"] == 0.0
  assert section["counts"]["positives"] == 1000 and section["canary_exposure"]["16"] == 2.0
  assert result.report["decision"]["empirical_epsilon_lower_bound"] == 0.0
  assert (tmp_path / "report" / "exposure.png").stat().st_size > 1000
  assert "empirical epsilon >= 0" in (tmp_path / "report" / "summary.txt").read_text()


def test_an_audit_that_contradicts_the_ledger_is_not_blessed(tmp_path):
  # Perfect separation of 1000 vs 1000: epsilon >= log(((0.025)^(1/1000)) / (1 - ...)) ~ 5.9,
  # far above the ledger's 0.864.
  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, audit=_audit(1000, 0))
  testing.assert_not_blessed(result, reason="the training or the accounting is broken")
  assert result.report["audit"]["empirical_epsilon_lower_bound"] == pytest.approx(
    math.log(0.025 ** (1 / 1000) / (1 - 0.025 ** (1 / 1000))), abs=1e-3
  )


def test_canary_exposure_over_the_policy_maximum_is_not_blessed(tmp_path):
  policy = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, max_canary_exposure=8.0)
  within = testing.run_privacy_evaluator(
    one_run_ledger(),
    policy,
    tmp_path / "within",
    audit=_audit(500, 500, exposures={0: 9.0, 4: 7.5}),
  )
  testing.assert_blessed(within)  # a never-inserted canary's exposure does not count
  over = testing.run_privacy_evaluator(
    one_run_ledger(),
    policy,
    tmp_path / "over",
    audit=_audit(500, 500, exposures={1: 3.0, 16: 12.0}),
  )
  testing.assert_not_blessed(over, reason="exceeds the policy's max_canary_exposure")


def test_a_canary_limit_without_a_canary_audit_is_not_blessed(tmp_path):
  policy = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, max_canary_exposure=8.0)
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(one_run_ledger(), policy, tmp_path / "none"),
    reason="no canary audit was given",
  )
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(
      one_run_ledger(), policy, tmp_path / "empty", audit=_audit(500, 500)
    ),
    reason="measured no inserted canaries",
  )


def test_an_audit_of_another_model_is_not_blessed():
  ledger = one_run_ledger()
  ledger.model_digest = "sha256:this-model"
  audit = dataclasses.replace(_audit(500, 500), model_digest="sha256:another-model")
  decision = decide(POLICY, ledger, model_digest="sha256:this-model", audit=audit)
  assert not decision.blessed
  assert any("measured another model" in reason for reason in decision.reasons)
