"""PrivacyEvaluator executor on the ledger history against what MLMD recorded of earlier DPTrainer
runs: a segment missing, shortened or changed since, or in another history, is not blessed."""

import json
import shutil

import pytest

from dp_tfx.components import ledger_records, testing
from dp_tfx.ledger import _hash_body
from tests.components.privacy_evaluator_cases import (
  HISTORY_POLICY,
  earlier_run,
  recount,
  run_into_history,
  segment_file,
)


def test_a_segment_deleted_before_the_next_run_opened_the_history_is_caught_by_mlmd(tmp_path):
  history = tmp_path / "history"
  earlier, earlier_artifact = earlier_run(tmp_path, history)
  segment_file(history, earlier).unlink()  # before this run opened the history: it never saw it
  this_run = run_into_history(history, run_id="this")
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
    f"segment {segment_id}, which DPTrainer run (artifact id 101) recorded in MLMD in the "
    f"ledger history {history}, is missing from the ledger history {history}: its "
    "steps would drop out of the total; copy its segment file back",
  )


def test_every_segment_mlmd_recorded_still_there_is_blessed(tmp_path):
  history = tmp_path / "history"
  _, first = earlier_run(tmp_path, history, run_id="first", artifact_id=101)
  _, second = earlier_run(tmp_path, history, run_id="second", artifact_id=102)
  this_run = run_into_history(history, run_id="this")
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
  earlier, earlier_artifact = earlier_run(tmp_path, history)
  recount(segment_file(history, earlier), 4)  # 40 -> 4 steps, re-hashed
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(
    result,
    "records 4 noisy steps, fewer than the 40 DPTrainer run "
    f"(artifact id 101) recorded in MLMD in the ledger history {history}: it was shortened; "
    "restore the segment file",
  )


def test_a_segment_whose_facts_changed_before_the_next_run_is_caught(tmp_path):
  history = tmp_path / "history"
  earlier, earlier_artifact = earlier_run(tmp_path, history)
  path = segment_file(history, earlier)
  document = json.loads(path.read_text())
  document["body"]["segment"]["noise_multiplier"] = 50.0
  document["content_hash"] = _hash_body(document["body"])  # a careful forger
  path.write_text(json.dumps(document))
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(
    result, "differs from the facts DPTrainer run (artifact id 101) recorded in MLMD"
  )


def test_an_earlier_run_recorded_in_another_history_directory_is_not_blessed(tmp_path):
  # The same pipeline (MLMD) rerun with a new ledger history: a fresh budget, unless the earlier
  # runs' segments come along.
  old, new = tmp_path / "old-history", tmp_path / "new-history"
  earlier, elsewhere = earlier_run(tmp_path, old)
  this_run = run_into_history(new, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[elsewhere]
  )
  testing.assert_not_blessed(
    result,
    f"segment {earlier.segments[0].segment_id}, which DPTrainer run (artifact id 101) "
    f"recorded in MLMD in the ledger history {old}, is missing from the ledger history {new}",
  )
  assert "run with the history that holds it" in result.reasons[0]
  # Moved along, the earlier run counts in the new history: blessed, with both runs' steps.
  shutil.copy(segment_file(old, earlier), new)
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
  _, through_the_link = earlier_run(tmp_path, link)  # recorded under the link's path
  this_run = run_into_history(history, run_id="this")  # the resolved path
  assert ledger_records.recorded_history_dir(through_the_link) == str(link)
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[through_the_link]
  )
  testing.assert_blessed(result)
  assert result.report["ledger"]["noisy_steps"] == 80


def test_an_earlier_ledger_without_a_segment_record_is_passed_over(tmp_path):
  history = tmp_path / "history"
  earlier, before_the_record = earlier_run(tmp_path, history)
  for name in (ledger_records.LEDGER_SEGMENTS_PROPERTY, ledger_records.LEDGER_HISTORY_DIR_PROPERTY):
    before_the_record.mlmd_artifact.custom_properties.pop(name)  # written by an older dp_tfx
  segment_file(history, earlier).unlink()
  this_run = run_into_history(history, run_id="this")
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
  _, earlier_artifact = earlier_run(tmp_path, history)
  earlier_artifact.set_string_custom_property(ledger_records.LEDGER_SEGMENTS_PROPERTY, value)
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, reason)
  assert any("PrivacyLedger artifact id 101" in r for r in result.reasons)


def test_what_the_dptrainer_records_in_mlmd_reads_back(tmp_path):
  history = tmp_path / "history"
  run_into_history(history, run_id="first")
  ledger = run_into_history(history, run_id="second")
  artifact = testing.ledger_artifact(ledger, tmp_path / "artifact")
  assert ledger_records.recorded_history_dir(artifact) == str(history)
  recorded = ledger_records.recorded_segments(artifact)
  assert [(r.segment_id, r.noisy_steps) for r in recorded] == [
    (s.segment_id, 40) for s in ledger.segments
  ]
  assert all(
    r.fixed_facts_sha256 == s.fixed_facts_hash() for r, s in zip(recorded, ledger.segments)
  )
  assert artifact.get_string_custom_property(ledger_records.LEDGER_HASH_PROPERTY) == (
    ledger.content_hash()
  )
  # Without a ledger key, nothing to sign the record with.
  assert not artifact.has_custom_property(ledger_records.LEDGER_RECORD_SIGNATURE_PROPERTY)
