"""PrivacyEvaluator executor on ledgers recorded in a ledger history: it judges the history's
total at evaluation time, and refuses a history damaged, missing, or unsigned where the policy
requires signatures."""

import pathlib
import shutil

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from dp_tfx import signing
from dp_tfx.components import testing
from dp_tfx.config import DPConfig
from dp_tfx.ledger import PrivacyLedger
from dp_tfx.plan import TrainingPlan
from dp_tfx.policy import PrivacyPolicy
from tests.components.privacy_evaluator_cases import (
  HISTORY_PLAN,
  HISTORY_POLICY,
  SIGNED_POLICY,
  recount,
  run_into_history,
)


def _composed_epsilon(runs, delta=1e-5):
  """epsilon of runs [(N, steps)] composed, straight from dp_accounting (RDP: fast, and exact in
  composition; the PLD path is the same code, tested on single runs in
  test_privacy_evaluator_decision.py)."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  for size, steps in runs:
    accountant.compose(
      dp_accounting.PoissonSampledDpEvent(200 / size, dp_accounting.GaussianDpEvent(1.1)), steps
    )
  return accountant.get_epsilon(delta)


def test_the_total_of_the_history_at_evaluation_time_is_judged_and_every_run_listed(tmp_path):
  history = tmp_path / "history"
  run_into_history(history, run_id="earlier")
  this_run = run_into_history(history, dataset_size=3999, run_id="this")
  policy = PrivacyPolicy(max_epsilon=10.0, delta=1e-5, accountant="rdp")

  def a_concurrent_run_goes_on(_):  # after this run's snapshot, before the evaluation
    run_into_history(history, steps=25, run_id="concurrent")

  result = testing.run_privacy_evaluator(
    this_run, policy, tmp_path / "eval", tamper=a_concurrent_run_goes_on
  )
  testing.assert_blessed(result)
  assert result.report["ledger"]["noisy_steps"] == 105
  assert result.report["epsilon"] == pytest.approx(
    _composed_epsilon([(4000, 40), (3999, 40), (4000, 25)]), rel=1e-9
  )
  runs = {run["run_id"]: run for run in result.report["ledger"]["runs"]}
  assert set(runs) == {"earlier", "this", "concurrent"} and runs["this"]["this_run"]
  assert runs["this"]["dataset_sizes"] == [3999] and runs["concurrent"]["noisy_steps"] == 25
  summary = (tmp_path / "eval" / "report" / "summary.txt").read_text()
  assert "composes 3 run(s)" in summary and "run this (this run)" in summary


def test_two_concurrent_runs_each_judged_on_every_step_over_policy(tmp_path):
  # Each run alone is within max_epsilon; together they are not, whichever finishes first.
  history = tmp_path / "history"
  first, second = (
    PrivacyLedger.open_history(history, 4000, "sha256:d", run_id=name)
    for name in ("first", "second")
  )
  plan = TrainingPlan.from_config(DPConfig(**HISTORY_PLAN), 4000)
  for ledger in (first, second):
    ledger.start_segment(plan)
  for _ in range(40):
    first.record_step()
    second.record_step()
  alone = _composed_epsilon([(4000, 40)])
  together = _composed_epsilon([(4000, 40), (4000, 40)])
  policy = PrivacyPolicy(max_epsilon=(alone + together) / 2, delta=1e-5, accountant="rdp")
  for name, ledger in (("first", first), ("second", second)):
    ledger.refresh()
    result = testing.run_privacy_evaluator(ledger, policy, tmp_path / name)
    testing.assert_not_blessed(result, "exceeds the policy's max_epsilon")
    assert result.report["ledger"]["noisy_steps"] == 80
    assert result.report["epsilon"] == pytest.approx(together, rel=1e-9)


def _damage_a_segment(damage):
  def tamper(artifact_path):
    ledger = PrivacyLedger.load(artifact_path)
    damage(sorted(pathlib.Path(ledger.history_dir).glob("segment-*.json"))[0])

  return tamper


@pytest.mark.parametrize(
  "damage, reason",
  [
    (
      lambda p: p.write_text(p.read_text().replace('"noisy_steps": 40', '"noisy_steps": 4')),
      "content_hash",
    ),
    (lambda p: p.write_text(p.read_text()[:100]), "not valid JSON"),
    (lambda p: p.write_text('{"body": {}, "content_hash": 1}'), "'body' and 'content_hash'"),
    (lambda p: recount(p, 4), "it was shortened"),
    (lambda p: p.unlink(), "missing from the ledger history"),
  ],
  ids=["edited", "truncated", "malformed", "shortened-and-rehashed", "deleted"],
)
def test_a_damaged_history_is_not_blessed(tmp_path, damage, reason):
  history = tmp_path / "history"
  run_into_history(history, run_id="earlier")
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", tamper=_damage_a_segment(damage)
  )
  testing.assert_not_blessed(result, reason)


def test_a_missing_history_is_not_blessed(tmp_path):
  this_run = run_into_history(tmp_path / "history")
  result = testing.run_privacy_evaluator(
    this_run,
    HISTORY_POLICY,
    tmp_path / "eval",
    tamper=lambda _: shutil.rmtree(tmp_path / "history"),
  )
  testing.assert_not_blessed(result, "is missing")


# -- signed ledger histories: a policy that requires signatures ------------------------------------


def test_a_signed_history_is_blessed_under_a_policy_requiring_signatures(tmp_path, ledger_key):
  history = tmp_path / "history"
  run_into_history(history, run_id="earlier")
  this_run = run_into_history(history, run_id="this")
  testing.assert_blessed(testing.run_privacy_evaluator(this_run, SIGNED_POLICY, tmp_path / "e"))


def test_a_segment_edited_and_rehashed_without_the_key_is_not_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  run_into_history(history, run_id="earlier")
  this_run = run_into_history(history, run_id="this")
  # A forger who recomputes the content hash: caught by the signature (the snapshot check alone
  # would not see a segment grow).
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "e", tamper=_damage_a_segment(lambda p: recount(p, 45))
  )
  testing.assert_not_blessed(result, "signature does not match the ledger key")


def test_unsigned_records_or_no_key_at_the_evaluator_are_not_blessed(tmp_path, ledger_key):
  unsigned = run_into_history(tmp_path / "unsigned")  # written while a key is set: signed ...
  ledger_key.delenv(signing.KEY_ENV)  # ... but the evaluator has no key
  result = testing.run_privacy_evaluator(unsigned, SIGNED_POLICY, tmp_path / "no-key")
  testing.assert_not_blessed(result, "requires signed ledgers, but no ledger key is set")
  plain = run_into_history(tmp_path / "plain")  # written without a key
  ledger_key.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  result = testing.run_privacy_evaluator(plain, SIGNED_POLICY, tmp_path / "plain-eval")
  testing.assert_not_blessed(result, "written without a key")
