"""PrivacyEvaluator executor on one run's ledger: blesses within the policy, refuses what it
does not allow (epsilon, delta, sampling, noise, seeds, the upstream's verdict), and says why."""

import math

import pytest
from tfx import types
from tfx.types import standard_artifacts

from dp_tfx import accounting
from dp_tfx.components import testing
from dp_tfx.components.privacy_evaluator import component
from dp_tfx.policy import PrivacyPolicy
from tests.components.privacy_evaluator_cases import POLICY, one_run_ledger


def test_blesses_within_policy_with_epsilon_from_the_ledger(tmp_path):
  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path)
  testing.assert_blessed(result)
  assert result.report["epsilon"] == pytest.approx(
    0.864, rel=0.01
  )  # docs/architecture.md, "Accounting reference values"
  assert result.blessing.get_float_custom_property("epsilon") == pytest.approx(0.864, rel=0.01)
  assert result.blessing.get_int_custom_property("current_model_id") == 7
  assert (tmp_path / "report" / "epsilon.png").stat().st_size > 1000
  assert "BLESSED" in (tmp_path / "report" / "summary.txt").read_text()


def test_epsilon_over_policy_is_not_blessed(tmp_path):
  result = testing.run_privacy_evaluator(
    one_run_ledger(noise_multiplier=1.1, steps=14062), POLICY, tmp_path
  )
  testing.assert_not_blessed(result, "exceeds the policy's max_epsilon")
  assert result.report["epsilon"] == pytest.approx(2.382, rel=0.01)


def test_zero_steps(tmp_path):
  ledger = one_run_ledger()
  ledger.segments[0].noisy_steps = 0
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, POLICY, tmp_path), "no noisy steps"
  )


def test_delta_above_one_over_n(tmp_path):
  policy = PrivacyPolicy(max_epsilon=100.0, delta=1e-3)
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(one_run_ledger(), policy, tmp_path), "exceeds 1/N"
  )


def test_shuffled_run_under_require_poisson(tmp_path):
  ledger = one_run_ledger(sampling="shuffle")
  result = testing.run_privacy_evaluator(
    ledger, PrivacyPolicy(max_epsilon=100.0, delta=1e-5), tmp_path
  )
  testing.assert_not_blessed(result, "Poisson")
  assert "not a rigorous bound" in result.report["note"]


def test_shuffled_run_allowed_when_policy_allows_but_flagged(tmp_path):
  policy = PrivacyPolicy(max_epsilon=100.0, delta=1e-5, require_poisson=False)
  result = testing.run_privacy_evaluator(one_run_ledger(sampling="shuffle"), policy, tmp_path)
  testing.assert_blessed(result)
  assert result.report["ledger"]["rigorous"] is False


def test_no_noise_is_never_blessed(tmp_path):
  result = testing.run_privacy_evaluator(
    one_run_ledger(noise_multiplier=0.0), PrivacyPolicy(max_epsilon=1e6, delta=1e-5), tmp_path
  )
  testing.assert_not_blessed(result, "without noise")
  assert result.report["epsilon_is_infinite"]
  # report.json is strict JSON: no Infinity, which most JSON parsers refuse.
  text = (tmp_path / "report" / "report.json").read_text()
  assert "Infinity" not in text and "NaN" not in text


def test_upstream_not_blessed_blocks(tmp_path):
  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, upstream_blessed=False)
  testing.assert_not_blessed(result, "upstream")
  testing.assert_blessed(
    testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path / "ok", upstream_blessed=True)
  )


def test_rdp_policy_uses_rdp(tmp_path):
  policy = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, accountant="rdp")
  result = testing.run_privacy_evaluator(one_run_ledger(), policy, tmp_path)
  assert result.report["epsilon"] == pytest.approx(0.954, rel=0.01)


def test_policy_is_validated_when_the_pipeline_is_built():
  with pytest.raises(ValueError, match="max_epsilon"):
    PrivacyPolicy(max_epsilon=-1)
  with pytest.raises(ValueError, match="accountant"):
    PrivacyPolicy(max_epsilon=1, accountant="moments")
  with pytest.raises(TypeError, match="PrivacyPolicy"):
    component.PrivacyEvaluator(
      model=types.Channel(type=standard_artifacts.Model),
      privacy_ledger=types.Channel(type=standard_artifacts.Model),
      privacy_policy={"max_epsilon": 1},
    )


def test_epsilon_curve_ends_at_the_reported_epsilon(tmp_path):
  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path)
  curve = result.report["epsilon_curve"]
  assert curve[-1]["step"] == 3515
  assert curve[-1]["epsilon"] == pytest.approx(result.report["epsilon"])
  assert all(a["epsilon"] < b["epsilon"] for a, b in zip(curve, curve[1:]))
  assert not math.isnan(curve[0]["epsilon"])


def test_microbatched_ledger_is_accounted_with_twice_the_sensitivity(tmp_path):
  result = testing.run_privacy_evaluator(
    one_run_ledger(num_microbatches=32), PrivacyPolicy(max_epsilon=100.0, delta=1e-5), tmp_path
  )
  expected = accounting.compute_epsilon(
    sampling_rate=256 / 60000, noise_multiplier=0.65, steps=3515, delta=1e-5
  )
  assert result.report["epsilon"] == pytest.approx(expected, rel=1e-3)


def test_seeded_runs_are_refused_unless_the_policy_allows_them(tmp_path):
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(one_run_ledger(seeded=True), POLICY, tmp_path), "fixed seed"
  )
  allowing = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, allow_seeded=True)
  testing.assert_blessed(
    testing.run_privacy_evaluator(one_run_ledger(seeded=True), allowing, tmp_path / "allowed")
  )


def test_one_verdict_line_is_printed_either_way(tmp_path, capsys):
  testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path / "blessed")
  testing.run_privacy_evaluator(
    one_run_ledger(), PrivacyPolicy(max_epsilon=0.5, delta=1e-5), tmp_path / "refused"
  )
  lines = [
    line for line in capsys.readouterr().out.splitlines() if line.startswith("PrivacyEvaluator:")
  ]
  assert [line.split(":")[1].split()[0:2] for line in lines] == [["BLESSED"], ["NOT", "BLESSED"]]
