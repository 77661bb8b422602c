"""PrivacyEvaluator executor on real artifacts: blesses within policy, fails closed otherwise."""

import dataclasses
import json
import math
import pathlib
import shutil

import pytest

from dp_tfx import accounting, poisson_batches, record_digest, signing
from dp_tfx.components import artifacts, specs, testing
from dp_tfx.components.privacy_evaluator import component, executor
from dp_tfx.ledger import LEDGER_FILE_NAME, LedgerError, PrivacyLedger, _hash_body
from dp_tfx.policy import PrivacyPolicy
from tfx import types
from tfx.types import standard_artifacts

POLICY = PrivacyPolicy(max_epsilon=1.0, delta=1e-5)


def _ledger(**overrides):
  facts = dict(dataset_size=60000, batch_size=256, noise_multiplier=1.3, steps=3515)
  facts.update(overrides)
  return testing.make_ledger(**facts)


def _edit_body(edit):
  def tamper(path):
    document = json.loads(path.read_text())
    edit(document["body"])
    path.write_text(json.dumps(document))

  return tamper


def test_blesses_within_policy_with_epsilon_from_the_ledger(tmp_path):
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path)
  testing.assert_blessed(result)
  assert result.report["epsilon"] == pytest.approx(0.864, rel=0.01)  # DESIGN.md reference
  assert result.blessing.get_float_custom_property("epsilon") == pytest.approx(0.864, rel=0.01)
  assert result.blessing.get_int_custom_property("current_model_id") == 7
  assert (tmp_path / "report" / "epsilon.png").stat().st_size > 1000
  assert "BLESSED" in (tmp_path / "report" / "summary.txt").read_text()


def test_epsilon_over_policy_is_not_blessed(tmp_path):
  result = testing.run_privacy_evaluator(
    _ledger(noise_multiplier=1.1, steps=14062), POLICY, tmp_path
  )
  testing.assert_not_blessed(result, "exceeds the policy's max_epsilon")
  assert result.report["epsilon"] == pytest.approx(2.382, rel=0.01)


def test_deleted_ledger(tmp_path):
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, tamper=lambda p: p.unlink())
  testing.assert_not_blessed(result, "no privacy ledger")


def test_edited_ledger(tmp_path):
  edit = _edit_body(lambda body: body["segments"][0].update(noise_multiplier=50.0))
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, tamper=edit)
  testing.assert_not_blessed(result, "content_hash")


def test_a_re_hashed_ledger_is_refused_by_the_hash_the_trainer_recorded(tmp_path):
  # sigma 1.3 -> 5.0 with the file's own hash recomputed: only the MLMD record can tell.
  def forge(path):
    document = json.loads(path.read_text())
    document["body"]["segments"][0]["noise_multiplier"] = 5.0
    document["content_hash"] = _hash_body(document["body"])
    path.write_text(json.dumps(document))

  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, tamper=forge)
  testing.assert_not_blessed(result, "differs from the one the DPTrainer recorded in MLMD")


def test_a_ledger_artifact_without_the_trainers_recorded_hash_is_refused(tmp_path):
  artifact = artifacts.PrivacyLedger()
  artifact.uri = str(tmp_path)
  _ledger().save(tmp_path / LEDGER_FILE_NAME)
  with pytest.raises(LedgerError, match="recorded no content_hash"):
    executor.Executor._ledger({specs.PRIVACY_LEDGER_KEY: [artifact]}, key=None)


@pytest.mark.parametrize(
  "field, value, reason",
  [
    ("noise_multiplier", -1.0, "noise_multiplier"),
    ("sampling_rate", 1.5, "sampling_rate"),
    ("planned_steps", 0, "planned_steps"),
  ],
)
def test_impossible_values_even_with_a_recomputed_hash(tmp_path, field, value, reason):
  def tamper(path):
    document = json.loads(path.read_text())
    document["body"]["segments"][0][field] = value
    document["content_hash"] = _hash_body(document["body"])  # a careful forger
    path.write_text(json.dumps(document))

  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, tamper=tamper)
  testing.assert_not_blessed(result, reason)


def test_zero_steps(tmp_path):
  ledger = _ledger()
  ledger.segments[0].noisy_steps = 0
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, POLICY, tmp_path), "no noisy steps"
  )


def test_delta_above_one_over_n(tmp_path):
  policy = PrivacyPolicy(max_epsilon=100.0, delta=1e-3)
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(_ledger(), policy, tmp_path), "exceeds 1/N"
  )


def test_shuffled_run_under_require_poisson(tmp_path):
  ledger = _ledger(sampling="shuffle")
  result = testing.run_privacy_evaluator(
    ledger, PrivacyPolicy(max_epsilon=100.0, delta=1e-5), tmp_path
  )
  testing.assert_not_blessed(result, "Poisson")
  assert "not a rigorous bound" in result.report["note"]


def test_shuffled_run_allowed_when_policy_allows_but_flagged(tmp_path):
  policy = PrivacyPolicy(max_epsilon=100.0, delta=1e-5, require_poisson=False)
  result = testing.run_privacy_evaluator(_ledger(sampling="shuffle"), policy, tmp_path)
  testing.assert_blessed(result)
  assert result.report["ledger"]["rigorous"] is False


def test_no_noise_is_never_blessed(tmp_path):
  result = testing.run_privacy_evaluator(
    _ledger(noise_multiplier=0.0), PrivacyPolicy(max_epsilon=1e6, delta=1e-5), tmp_path
  )
  testing.assert_not_blessed(result, "without noise")
  assert result.report["epsilon_is_infinite"]
  # report.json is strict JSON: no Infinity, which most JSON parsers refuse.
  text = (tmp_path / "report" / "report.json").read_text()
  assert "Infinity" not in text and "NaN" not in text


def test_ledger_for_another_model(tmp_path):
  def swap_model(path):  # an intact ledger (and MLMD record), beside another model's files
    (model_file,) = (tmp_path / "model").rglob("saved_model.pb")
    model_file.write_bytes(b"another model")

  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, tamper=swap_model)
  testing.assert_not_blessed(result, "another model")


def test_upstream_not_blessed_blocks(tmp_path):
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, upstream_blessed=False)
  testing.assert_not_blessed(result, "upstream")
  testing.assert_blessed(
    testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path / "ok", upstream_blessed=True)
  )


def test_rdp_policy_uses_rdp(tmp_path):
  policy = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, accountant="rdp")
  result = testing.run_privacy_evaluator(_ledger(), policy, tmp_path)
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
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path)
  curve = result.report["epsilon_curve"]
  assert curve[-1]["step"] == 3515
  assert curve[-1]["epsilon"] == pytest.approx(result.report["epsilon"])
  assert all(a["epsilon"] < b["epsilon"] for a, b in zip(curve, curve[1:]))
  assert not math.isnan(curve[0]["epsilon"])


def test_microbatched_ledger_is_accounted_with_twice_the_sensitivity(tmp_path):
  result = testing.run_privacy_evaluator(
    _ledger(num_microbatches=32), PrivacyPolicy(max_epsilon=100.0, delta=1e-5), tmp_path
  )
  expected = accounting.compute_epsilon(
    sampling_rate=256 / 60000, noise_multiplier=0.65, steps=3515, delta=1e-5
  )
  assert result.report["epsilon"] == pytest.approx(expected, rel=1e-3)


def test_seeded_runs_are_refused_unless_the_policy_allows_them(tmp_path):
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(_ledger(seeded=True), POLICY, tmp_path), "fixed seed"
  )
  allowing = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, allow_seeded=True)
  testing.assert_blessed(
    testing.run_privacy_evaluator(_ledger(seeded=True), allowing, tmp_path / "allowed")
  )


def _audit(true_positives, false_positives, exposures=None, attacked=1000):
  """An audit whose attack called `true_positives` of `attacked` members and `false_positives` of
  `attacked` non-members members; `exposures` maps repetitions to one canary's exposure."""
  from dp_tfx.audit import AttackCounts, Exposure, MembershipAudit
  from dp_tfx.audit.result import CanaryResult, ModelAudit, PrivacyAudit

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
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, audit=audit)
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
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path, audit=_audit(1000, 0))
  testing.assert_not_blessed(result, reason="the training or the accounting is broken")
  assert result.report["audit"]["empirical_epsilon_lower_bound"] == pytest.approx(
    math.log(0.025 ** (1 / 1000) / (1 - 0.025 ** (1 / 1000))), abs=1e-3
  )


def test_canary_exposure_over_the_policy_maximum_is_not_blessed(tmp_path):
  policy = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, max_canary_exposure=8.0)
  within = testing.run_privacy_evaluator(
    _ledger(), policy, tmp_path / "within", audit=_audit(500, 500, exposures={0: 9.0, 4: 7.5})
  )
  testing.assert_blessed(within)  # a never-inserted canary's exposure does not count
  over = testing.run_privacy_evaluator(
    _ledger(), policy, tmp_path / "over", audit=_audit(500, 500, exposures={1: 3.0, 16: 12.0})
  )
  testing.assert_not_blessed(over, reason="exceeds the policy's max_canary_exposure")


def test_a_canary_limit_without_a_canary_audit_is_not_blessed(tmp_path):
  policy = PrivacyPolicy(max_epsilon=1.0, delta=1e-5, max_canary_exposure=8.0)
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(_ledger(), policy, tmp_path / "none"),
    reason="no canary audit was given",
  )
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(_ledger(), policy, tmp_path / "empty", audit=_audit(500, 500)),
    reason="measured no inserted canaries",
  )


def test_an_audit_of_another_model_is_not_blessed():
  import dataclasses

  from dp_tfx.policy import decide

  ledger = _ledger()
  ledger.model_digest = "sha256:this-model"
  audit = dataclasses.replace(_audit(500, 500), model_digest="sha256:another-model")
  decision = decide(POLICY, ledger, model_digest="sha256:this-model", audit=audit)
  assert not decision.blessed
  assert any("measured another model" in reason for reason in decision.reasons)


# -- ledgers recorded in a ledger history: the evaluator judges the history's total ----------------

HISTORY_PLAN = dict(noise_multiplier=1.1, batch_size=200, steps=40)
HISTORY_POLICY = PrivacyPolicy(max_epsilon=10.0, delta=1e-5, accountant="rdp")


def _run_into_history(history, steps=40, dataset_size=4000, run_id=None):
  """A run of `steps` noisy steps recorded in the ledger history, as the DPTrainer records one."""
  from dp_tfx.config import DPConfig
  from dp_tfx.plan import TrainingPlan

  ledger = PrivacyLedger.open_history(
    history, dataset_size, f"sha256:{dataset_size}", data_source="digits", run_id=run_id
  )
  ledger.start_segment(TrainingPlan.from_config(DPConfig(**HISTORY_PLAN), dataset_size))
  for _ in range(steps):
    ledger.record_step()
  ledger.refresh()
  return ledger


def _composed_epsilon(runs, delta=1e-5):
  """epsilon of runs [(N, steps)] composed, straight from dp_accounting (RDP: fast, and exact in
  composition; the PLD path is the same code, tested on single runs above)."""
  from dp_accounting.rdp import rdp_privacy_accountant
  import dp_accounting

  accountant = rdp_privacy_accountant.RdpAccountant()
  for size, steps in runs:
    accountant.compose(
      dp_accounting.PoissonSampledDpEvent(200 / size, dp_accounting.GaussianDpEvent(1.1)), steps
    )
  return accountant.get_epsilon(delta)


def test_the_total_of_the_history_at_evaluation_time_is_judged_and_every_run_listed(tmp_path):
  history = tmp_path / "history"
  _run_into_history(history, run_id="earlier")
  this_run = _run_into_history(history, dataset_size=3999, run_id="this")
  policy = PrivacyPolicy(max_epsilon=10.0, delta=1e-5, accountant="rdp")

  def a_concurrent_run_goes_on(_):  # after this run's snapshot, before the evaluation
    _run_into_history(history, steps=25, run_id="concurrent")

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
  from dp_tfx.config import DPConfig
  from dp_tfx.plan import TrainingPlan

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


def _recount(path, steps):
  document = json.loads(path.read_text())
  document["body"]["segment"]["noisy_steps"] = steps
  document["content_hash"] = _hash_body(document["body"])  # a careful forger
  path.write_text(json.dumps(document))


@pytest.mark.parametrize(
  "damage, reason",
  [
    (
      lambda p: p.write_text(p.read_text().replace('"noisy_steps": 40', '"noisy_steps": 4')),
      "content_hash",
    ),
    (lambda p: p.write_text(p.read_text()[:100]), "not valid JSON"),
    (lambda p: p.write_text('{"body": {}, "content_hash": 1}'), "'body' and 'content_hash'"),
    (lambda p: _recount(p, 4), "it was shortened"),
    (lambda p: p.unlink(), "missing from the ledger history"),
  ],
  ids=["edited", "truncated", "malformed", "shortened-and-rehashed", "deleted"],
)
def test_a_damaged_history_is_not_blessed(tmp_path, damage, reason):
  history = tmp_path / "history"
  _run_into_history(history, run_id="earlier")
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", tamper=_damage_a_segment(damage)
  )
  testing.assert_not_blessed(result, reason)


def test_a_missing_history_is_not_blessed(tmp_path):
  import shutil

  this_run = _run_into_history(tmp_path / "history")
  result = testing.run_privacy_evaluator(
    this_run,
    HISTORY_POLICY,
    tmp_path / "eval",
    tamper=lambda _: shutil.rmtree(tmp_path / "history"),
  )
  testing.assert_not_blessed(result, "is missing")


# -- the history against what MLMD recorded of earlier DPTrainer runs -----------------------------


def _segment_file(history, ledger):
  """The file of the segment `ledger`'s run recorded in the history."""
  (segment,) = [s for s in ledger.segments if s.run_id == ledger.run_id]
  return history / f"{segment.segment_id}.json"


def _earlier_run(tmp_path, history, run_id="earlier", artifact_id=101):
  """An earlier run recorded in the history, and its PrivacyLedger artifact as its DPTrainer
  recorded it in MLMD."""
  ledger = _run_into_history(history, run_id=run_id)
  return ledger, testing.ledger_artifact(
    ledger, tmp_path / f"artifact-{artifact_id}", artifact_id=artifact_id
  )


def test_a_segment_deleted_before_the_next_run_opened_the_history_is_caught_by_mlmd(tmp_path):
  history = tmp_path / "history"
  earlier, earlier_artifact = _earlier_run(tmp_path, history)
  _segment_file(history, earlier).unlink()  # before this run opened the history: it never saw it
  this_run = _run_into_history(history, run_id="this")
  # This run's snapshot and the history agree: alone, they cannot tell the earlier run's budget
  # vanished.
  alone = testing.run_privacy_evaluator(this_run, HISTORY_POLICY, tmp_path / "alone")
  testing.assert_blessed(alone)
  # ... and the report says the MLMD check was not possible (no earlier ledgers handed over).
  assert alone.report["mlmd_cross_check"].startswith("not possible here")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  segment_id = earlier.segments[0].segment_id
  testing.assert_not_blessed(
    result,
    f"segment {segment_id}, recorded in MLMD by DPTrainer run (artifact id 101) in the "
    f"ledger history {history}, is missing from the ledger history {history}: that "
    "run's spending would drop out of the total; copy its segment file back",
  )


def test_every_segment_mlmd_recorded_still_there_is_blessed(tmp_path):
  history = tmp_path / "history"
  _, first = _earlier_run(tmp_path, history, run_id="first", artifact_id=101)
  _, second = _earlier_run(tmp_path, history, run_id="second", artifact_id=102)
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[second, first]
  )
  testing.assert_blessed(result)
  assert result.report["ledger"]["noisy_steps"] == 120
  assert result.report["mlmd_cross_check"] == (
    "the history holds every segment of the 2 DPTrainer run(s) of this pipeline that MLMD recorded"
  )
  # Its own artifact among them (as a Resolver that ran after the DPTrainer hands it over).
  this_artifact = testing.ledger_artifact(this_run, tmp_path / "this-artifact", artifact_id=103)
  testing.assert_blessed(
    testing.run_privacy_evaluator(
      this_run, HISTORY_POLICY, tmp_path / "eval-with-own", earlier_ledgers=[first, this_artifact]
    )
  )


def test_a_segment_shortened_before_the_next_run_opened_the_history_is_caught(tmp_path):
  history = tmp_path / "history"
  earlier, earlier_artifact = _earlier_run(tmp_path, history)
  _recount(_segment_file(history, earlier), 4)  # 40 -> 4 steps, re-hashed
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(
    result,
    "records 4 noisy steps, fewer than the 40 DPTrainer run "
    "(artifact id 101) recorded in MLMD: it was shortened; "
    "restore the segment file",
  )


def test_a_segment_whose_facts_changed_before_the_next_run_is_caught(tmp_path):
  history = tmp_path / "history"
  earlier, earlier_artifact = _earlier_run(tmp_path, history)
  path = _segment_file(history, earlier)
  document = json.loads(path.read_text())
  document["body"]["segment"]["noise_multiplier"] = 50.0
  document["content_hash"] = _hash_body(document["body"])  # a careful forger
  path.write_text(json.dumps(document))
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(
    result, "differs from the facts DPTrainer run (artifact id 101) recorded for it in MLMD"
  )


def test_an_earlier_run_recorded_in_another_history_directory_is_not_blessed(tmp_path):
  # The same pipeline (MLMD) rerun with a new ledger history: a fresh budget, unless the earlier
  # runs' segments come along.
  old, new = tmp_path / "old-history", tmp_path / "new-history"
  earlier, elsewhere = _earlier_run(tmp_path, old)
  this_run = _run_into_history(new, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[elsewhere]
  )
  testing.assert_not_blessed(
    result,
    f"segment {earlier.segments[0].segment_id}, recorded in MLMD by DPTrainer run "
    f"(artifact id 101) in the ledger history {old}, is missing from the ledger "
    f"history {new}",
  )
  assert "run with the history that holds it" in result.reasons[0]
  # Moved along, the earlier run counts in the new history: blessed, with both runs' steps.
  shutil.copy(_segment_file(old, earlier), new)
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "moved", earlier_ledgers=[elsewhere]
  )
  testing.assert_blessed(result)
  assert result.report["ledger"]["noisy_steps"] == 80


def test_the_same_history_reached_through_a_symlink_is_blessed(tmp_path):
  history = tmp_path / "history"
  history.mkdir()
  link = tmp_path / "link-to-history"
  link.symlink_to(history, target_is_directory=True)
  _, through_the_link = _earlier_run(tmp_path, link)  # recorded under the link's path
  this_run = _run_into_history(history, run_id="this")  # the resolved path
  assert artifacts.recorded_history_dir(through_the_link) == str(link)
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[through_the_link]
  )
  testing.assert_blessed(result)
  assert result.report["ledger"]["noisy_steps"] == 80


def test_an_earlier_ledger_without_a_segment_record_is_passed_over(tmp_path):
  history = tmp_path / "history"
  earlier, before_the_record = _earlier_run(tmp_path, history)
  for name in (artifacts.LEDGER_SEGMENTS_PROPERTY, artifacts.LEDGER_HISTORY_DIR_PROPERTY):
    before_the_record.mlmd_artifact.custom_properties.pop(name)  # written by an older dp_tfx
  _segment_file(history, earlier).unlink()
  this_run = _run_into_history(history, run_id="this")
  testing.assert_blessed(
    testing.run_privacy_evaluator(
      this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[before_the_record]
    )
  )


@pytest.mark.parametrize(
  "value, reason",
  [
    ("[{", "is not valid JSON"),
    ('{"segment_id": "x"}', "is not a list"),
    (
      '[{"segment_id": "x", "noisy_steps": "40", "fixed_facts_sha256": "sha256:0"}]',
      "entry 0 is malformed",
    ),
    ('[{"segment_id": "x", "noisy_steps": 40}]', "entry 0 is malformed"),
  ],
  ids=["not-json", "not-a-list", "steps-not-a-number", "no-hash"],
)
def test_a_malformed_mlmd_record_of_an_earlier_run_is_not_blessed(tmp_path, value, reason):
  history = tmp_path / "history"
  _, earlier_artifact = _earlier_run(tmp_path, history)
  earlier_artifact.set_string_custom_property(artifacts.LEDGER_SEGMENTS_PROPERTY, value)
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, reason)
  assert any("PrivacyLedger artifact id 101" in r for r in result.reasons)


def test_what_the_dptrainer_records_in_mlmd_reads_back(tmp_path):
  history = tmp_path / "history"
  _run_into_history(history, run_id="first")
  ledger = _run_into_history(history, run_id="second")
  artifact = testing.ledger_artifact(ledger, tmp_path / "artifact")
  assert artifacts.recorded_history_dir(artifact) == str(history)
  recorded = artifacts.recorded_segments(artifact)
  assert [(r.segment_id, r.noisy_steps) for r in recorded] == [
    (s.segment_id, 40) for s in ledger.segments
  ]
  assert all(
    r.fixed_facts_sha256 == artifacts.fixed_facts_hash(s) for r, s in zip(recorded, ledger.segments)
  )
  assert artifact.get_string_custom_property(artifacts.LEDGER_HASH_PROPERTY) == (
    ledger.content_hash()
  )
  # Without a ledger key, nothing to sign the record with.
  assert not artifact.has_custom_property(artifacts.LEDGER_RECORD_SIGNATURE_PROPERTY)


# -- signed ledgers: a policy that requires signatures --------------------------------------------

SIGNED_POLICY = PrivacyPolicy(
  max_epsilon=10.0, delta=1e-5, accountant="rdp", require_signature=True
)


@pytest.fixture
def ledger_key(monkeypatch):
  from dp_tfx import signing

  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)
  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  return monkeypatch


def test_a_signed_history_is_blessed_under_a_policy_requiring_signatures(tmp_path, ledger_key):
  history = tmp_path / "history"
  _run_into_history(history, run_id="earlier")
  this_run = _run_into_history(history, run_id="this")
  testing.assert_blessed(testing.run_privacy_evaluator(this_run, SIGNED_POLICY, tmp_path / "e"))


def test_a_segment_edited_and_rehashed_without_the_key_is_not_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  _run_into_history(history, run_id="earlier")
  this_run = _run_into_history(history, run_id="this")
  # A forger who recomputes the content hash: caught by the signature (the snapshot check alone
  # would not see a segment grow).
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "e", tamper=_damage_a_segment(lambda p: _recount(p, 45))
  )
  testing.assert_not_blessed(result, "signature does not match the ledger key")


def test_unsigned_records_or_no_key_at_the_evaluator_are_not_blessed(tmp_path, ledger_key):
  from dp_tfx import signing

  unsigned = _run_into_history(tmp_path / "unsigned")  # written while a key is set: signed ...
  ledger_key.delenv(signing.KEY_ENV)  # ... but the evaluator has no key
  result = testing.run_privacy_evaluator(unsigned, SIGNED_POLICY, tmp_path / "no-key")
  testing.assert_not_blessed(result, "requires signed ledgers, but no ledger key is set")
  plain = _run_into_history(tmp_path / "plain")  # written without a key
  ledger_key.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  result = testing.run_privacy_evaluator(plain, SIGNED_POLICY, tmp_path / "plain-eval")
  testing.assert_not_blessed(result, "written without a key")


def test_one_verdict_line_is_printed_either_way(tmp_path, capsys):
  testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path / "blessed")
  testing.run_privacy_evaluator(
    _ledger(), PrivacyPolicy(max_epsilon=0.5, delta=1e-5), tmp_path / "refused"
  )
  lines = [
    line for line in capsys.readouterr().out.splitlines() if line.startswith("PrivacyEvaluator:")
  ]
  assert [line.split(":")[1].split()[0:2] for line in lines] == [["BLESSED"], ["NOT", "BLESSED"]]


# -- the MLMD record of earlier runs, signed with the ledger key ----------------------------------


def _drop_recorded_segment(artifact):
  """An MLMD edit: the first recorded segment taken out of the record (its signature kept)."""
  recorded = json.loads(artifact.get_string_custom_property(artifacts.LEDGER_SEGMENTS_PROPERTY))
  artifact.set_string_custom_property(artifacts.LEDGER_SEGMENTS_PROPERTY, json.dumps(recorded[1:]))


def test_a_signed_record_of_an_earlier_run_is_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  _, earlier_artifact = _earlier_run(tmp_path, history)
  assert earlier_artifact.get_string_custom_property(
    artifacts.LEDGER_RECORD_SIGNATURE_PROPERTY
  ).startswith("hmac-sha256:")
  this_run = _run_into_history(history, run_id="this")
  testing.assert_blessed(
    testing.run_privacy_evaluator(
      this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
    )
  )


def test_a_segment_deleted_with_its_mlmd_record_edited_is_not_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  earlier, earlier_artifact = _earlier_run(tmp_path, history)
  _segment_file(history, earlier).unlink()
  _drop_recorded_segment(earlier_artifact)  # the record agrees with the history now ...
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(  # ... but not with its signature
    result,
    "the MLMD record of PrivacyLedger artifact id 101 does not match its signature: "
    "it was edited in MLMD",
  )


def test_an_unsigned_record_of_an_earlier_run_is_not_blessed_when_signatures_are_required(
  tmp_path, ledger_key
):
  history = tmp_path / "history"
  _, earlier_artifact = _earlier_run(tmp_path, history)  # segment files signed
  earlier_artifact.mlmd_artifact.custom_properties.pop(artifacts.LEDGER_RECORD_SIGNATURE_PROPERTY)
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, "PrivacyLedger artifact id 101 is unsigned")
  # Also when the whole record was removed (not passed over as an older dp_tfx's artifact).
  for name in (artifacts.LEDGER_SEGMENTS_PROPERTY, artifacts.LEDGER_HISTORY_DIR_PROPERTY):
    earlier_artifact.mlmd_artifact.custom_properties.pop(name)
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval-2", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, "PrivacyLedger artifact id 101 is unsigned")


def test_signatures_of_records_are_checked_only_when_the_policy_requires_them(tmp_path, ledger_key):
  # As for the history's files: a policy without require_signature verifies nothing.
  history = tmp_path / "history"
  _, earlier_artifact = _earlier_run(tmp_path, history)
  earlier_artifact.set_string_custom_property(artifacts.LEDGER_RECORD_SIGNATURE_PROPERTY, "x")
  this_run = _run_into_history(history, run_id="this")
  testing.assert_blessed(
    testing.run_privacy_evaluator(
      this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
    )
  )


# -- a signed record is bound to its artifact ----------------------------------------------------


def _copy_record(source, target):
  """An MLMD edit: every property of source's record (signature included) copied onto target."""
  for name in (
    artifacts.LEDGER_HASH_PROPERTY,
    artifacts.LEDGER_HISTORY_DIR_PROPERTY,
    artifacts.LEDGER_SEGMENTS_PROPERTY,
    artifacts.LEDGER_RECORD_ORIGIN_PROPERTY,
    artifacts.LEDGER_RECORD_SIGNATURE_PROPERTY,
  ):
    target.set_string_custom_property(name, source.get_string_custom_property(name))


def test_a_record_names_the_artifact_it_was_written_for(tmp_path):
  _, earlier_artifact = _earlier_run(tmp_path, tmp_path / "history")
  origin = artifacts.record_origin(earlier_artifact)
  assert origin == artifacts.RecordOrigin(uri=earlier_artifact.uri)


def test_a_signed_record_copied_onto_a_later_runs_artifact_is_not_blessed(tmp_path, ledger_key):
  # The second run's record replaced by the first's, signature and all, and the second run's
  # segment deleted: the record agrees with the history, its signature is genuine ...
  history = tmp_path / "history"
  _, first = _earlier_run(tmp_path, history, run_id="first", artifact_id=101)
  second_run, second = _earlier_run(tmp_path, history, run_id="second", artifact_id=102)
  _copy_record(first, second)
  _segment_file(history, second_run).unlink()
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[first, second]
  )
  testing.assert_not_blessed(  # ... but it names another artifact
    result, f"PrivacyLedger artifact id 102 was written for another artifact ({first.uri})"
  )
  # So does it where signatures are not required.
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval-2", earlier_ledgers=[first, second]
  )
  testing.assert_not_blessed(result, "was written for another artifact")


def test_one_record_on_two_artifacts_is_not_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  _, first = _earlier_run(tmp_path, history, run_id="first", artifact_id=101)
  second_run, second = _earlier_run(tmp_path, history, run_id="second", artifact_id=102)
  _copy_record(first, second)
  second.uri = first.uri  # the copy made to look like its artifact's own
  _segment_file(history, second_run).unlink()
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[first, second]
  )
  testing.assert_not_blessed(result, "PrivacyLedger artifact ids 101 and 102 hold the same record")


def test_a_record_signed_without_its_origin_is_not_blessed(tmp_path, ledger_key):
  # What an older dp_tfx signed (no origin), or a record whose origin was removed.
  history = tmp_path / "history"
  _, earlier_artifact = _earlier_run(tmp_path, history)
  earlier_artifact.mlmd_artifact.custom_properties.pop(artifacts.LEDGER_RECORD_ORIGIN_PROPERTY)
  this_run = _run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, "it names no artifact it was written for")


def test_this_runs_own_record_is_verified_under_a_policy_requiring_signatures(tmp_path, ledger_key):
  history = tmp_path / "history"
  this_run = _run_into_history(history, run_id="this")
  artifact = testing.ledger_artifact(this_run, tmp_path / "own")
  executor.Executor._ledger({specs.PRIVACY_LEDGER_KEY: [artifact]}, key=signing.configured_key())
  # The file is as written; the record beside it in MLMD lost its signature.
  artifact.mlmd_artifact.custom_properties.pop(artifacts.LEDGER_RECORD_SIGNATURE_PROPERTY)
  with pytest.raises(LedgerError, match="PrivacyLedger artifact id 1 is unsigned"):
    executor.Executor._ledger({specs.PRIVACY_LEDGER_KEY: [artifact]}, key=signing.configured_key())


def test_a_record_of_another_pipeline_is_refused(tmp_path):
  artifact = testing.ledger_artifact(_ledger(), tmp_path / "a")
  origin = artifacts.RecordOrigin(
    uri=artifact.uri, pipeline="other", pipeline_run_id="r", component="DPTrainer"
  )
  artifacts.record_ledger(artifact, _ledger(), origin)
  artifacts.check_origin(artifact, "other")
  artifacts.check_origin(artifact)  # the pipeline unknown: nothing to compare
  with pytest.raises(LedgerError, match="written by pipeline 'other', not this pipeline"):
    artifacts.check_origin(artifact, "mine")


# -- with the PoissonBatches the DPTrainer streamed ----------------------------------------------


def _streamed_ledger(runs_steps=(8,), dataset_size=200, batch_size=50):
  """A ledger of runs on one draw of Poisson batches, and the draw's manifest."""
  ledger = testing.make_ledger(
    dataset_size=dataset_size, batch_size=batch_size, noise_multiplier=1.0, steps=runs_steps[0]
  )
  plan = ledger.segments[0]
  draw = poisson_batches.new_draw(0, plan.planned_steps)
  for steps in runs_steps[1:]:
    ledger.segments.append(
      dataclasses.replace(ledger.segments[0], noisy_steps=steps, segment_id=f"later-{steps}")
    )
  for segment in ledger.segments:
    segment.dataset_fingerprint = f"poisson-draw:{draw}"
  manifest = poisson_batches.BatchManifest(
    dataset_size=dataset_size,
    batch_size=batch_size,
    sampling_rate=batch_size / dataset_size,
    steps=plan.planned_steps,
    first_step=0,
    last_step=plan.planned_steps,
    physical_batch_size=plan.physical_batch_size,
    shards=(poisson_batches.Shard("steps-0.tfrecord", 0, plan.planned_steps, 400, "0" * 64),),
    source="examples",
    split="train",
    draw=draw,
    data_digest=record_digest.of_records(b"%d" % i for i in range(dataset_size)),
  )
  return ledger, manifest


LENIENT = PrivacyPolicy(max_epsilon=20.0, delta=1e-5)


def test_a_ledger_of_the_streamed_batches_as_they_are_is_blessed(tmp_path):
  ledger, manifest = _streamed_ledger()
  testing.assert_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=manifest)
  )


def test_a_ledger_with_another_n_than_the_batches_is_refused(tmp_path):
  ledger, manifest = _streamed_ledger(dataset_size=200)
  # PoissonBatchGen drew from 400 examples (q 0.125); the ledger claims the run's q was 0.25.
  larger = dataclasses.replace(
    manifest,
    dataset_size=400,
    sampling_rate=50 / 400,
    data_digest=record_digest.of_records(b"%d" % i for i in range(400)),
  )
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=larger),
    "the batches' manifest says",
  )


def test_steps_taken_twice_on_the_batches_are_refused(tmp_path):
  ledger, manifest = _streamed_ledger(runs_steps=(8, 3))  # 11 steps on a draw of 8
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=manifest),
    "a step was taken twice",
  )


def test_a_ledger_with_no_run_on_the_batches_is_refused(tmp_path):
  ledger, manifest = _streamed_ledger()
  other = dataclasses.replace(manifest, draw=poisson_batches.new_draw(0, manifest.steps))
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=other),
    "records no run on the Poisson batches",
  )


def test_batches_edited_after_poisson_batch_gen_recorded_them_are_refused(tmp_path):
  ledger, manifest = _streamed_ledger()

  def edit_manifest(ledger_path):  # what PoissonBatchGen recorded in MLMD stays as it was
    path = ledger_path.parent.parent / "batches" / poisson_batches.MANIFEST_FILE
    body = json.loads(path.read_text())
    body["split"] = "eval"
    path.write_text(json.dumps(body))

  testing.assert_not_blessed(
    testing.run_privacy_evaluator(
      ledger, LENIENT, tmp_path, poisson_batches=manifest, tamper=edit_manifest
    ),
    "not the ones PoissonBatchGen recorded",
  )


def test_steps_past_a_partial_draw_are_refused(tmp_path):
  # PoissonBatchGen drew steps 4-8 of an 8-step plan: 6 steps recorded on them is 2 too many.
  ledger, manifest = _streamed_ledger(runs_steps=(8, 3))
  ledger.segments[0].noisy_steps = 3
  draw = poisson_batches.new_draw(4, 8)
  for segment in ledger.segments:
    segment.dataset_fingerprint = f"poisson-draw:{draw}"
  partial = dataclasses.replace(
    manifest,
    draw=draw,
    first_step=4,
    shards=(poisson_batches.Shard("steps-4.tfrecord", 4, 8, 200, "0" * 64),),
  )
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=partial),
    "which hold 4: a step was taken twice",
  )
