"""PrivacyEvaluator executor on the MLMD record of a ledger: signed with the ledger key, and
bound to the artifact (and pipeline) it was written for."""

import json

import pytest

from dp_tfx import signing
from dp_tfx.components import ledger_records, specs, testing
from dp_tfx.components.privacy_evaluator import executor
from dp_tfx.ledger import LedgerError
from tests.components.privacy_evaluator_cases import (
  HISTORY_POLICY,
  SIGNED_POLICY,
  earlier_run,
  one_run_ledger,
  run_into_history,
  segment_file,
)

# -- the MLMD record of earlier runs, signed with the ledger key ----------------------------------


def _drop_recorded_segment(artifact):
  """An MLMD edit: the first recorded segment taken out of the record (its signature kept)."""
  recorded = json.loads(
    artifact.get_string_custom_property(ledger_records.LEDGER_SEGMENTS_PROPERTY)
  )
  artifact.set_string_custom_property(
    ledger_records.LEDGER_SEGMENTS_PROPERTY, json.dumps(recorded[1:])
  )


def test_a_signed_record_of_an_earlier_run_is_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  _, earlier_artifact = earlier_run(tmp_path, history)
  assert earlier_artifact.get_string_custom_property(
    ledger_records.LEDGER_RECORD_SIGNATURE_PROPERTY
  ).startswith("hmac-sha256:")
  this_run = run_into_history(history, run_id="this")
  testing.assert_blessed(
    testing.run_privacy_evaluator(
      this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
    )
  )


def test_a_segment_deleted_with_its_mlmd_record_edited_is_not_blessed(tmp_path, ledger_key):
  history = tmp_path / "history"
  earlier, earlier_artifact = earlier_run(tmp_path, history)
  segment_file(history, earlier).unlink()
  _drop_recorded_segment(earlier_artifact)  # the record agrees with the history now ...
  this_run = run_into_history(history, run_id="this")
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
  _, earlier_artifact = earlier_run(tmp_path, history)  # segment files signed
  earlier_artifact.mlmd_artifact.custom_properties.pop(
    ledger_records.LEDGER_RECORD_SIGNATURE_PROPERTY
  )
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, "PrivacyLedger artifact id 101 is unsigned")
  # Also when the whole record was removed (not passed over as an older dp_tfx's artifact).
  for name in (ledger_records.LEDGER_SEGMENTS_PROPERTY, ledger_records.LEDGER_HISTORY_DIR_PROPERTY):
    earlier_artifact.mlmd_artifact.custom_properties.pop(name)
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval-2", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, "PrivacyLedger artifact id 101 is unsigned")


def test_signatures_of_records_are_checked_only_when_the_policy_requires_them(tmp_path, ledger_key):
  # As for the history's files: a policy without require_signature verifies nothing.
  history = tmp_path / "history"
  _, earlier_artifact = earlier_run(tmp_path, history)
  earlier_artifact.set_string_custom_property(ledger_records.LEDGER_RECORD_SIGNATURE_PROPERTY, "x")
  this_run = run_into_history(history, run_id="this")
  testing.assert_blessed(
    testing.run_privacy_evaluator(
      this_run, HISTORY_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
    )
  )


# -- a signed record is bound to its artifact ----------------------------------------------------


def _copy_record(source, target):
  """An MLMD edit: every property of source's record (signature included) copied onto target."""
  for name in (
    ledger_records.LEDGER_HASH_PROPERTY,
    ledger_records.LEDGER_HISTORY_DIR_PROPERTY,
    ledger_records.LEDGER_SEGMENTS_PROPERTY,
    ledger_records.LEDGER_RECORD_ORIGIN_PROPERTY,
    ledger_records.LEDGER_RECORD_SIGNATURE_PROPERTY,
  ):
    target.set_string_custom_property(name, source.get_string_custom_property(name))


def test_a_record_names_the_artifact_it_was_written_for(tmp_path):
  _, earlier_artifact = earlier_run(tmp_path, tmp_path / "history")
  origin = ledger_records.record_origin(earlier_artifact)
  assert origin == ledger_records.RecordOrigin(uri=earlier_artifact.uri)


def test_a_signed_record_copied_onto_a_later_runs_artifact_is_not_blessed(tmp_path, ledger_key):
  # The second run's record replaced by the first's, signature and all, and the second run's
  # segment deleted: the record agrees with the history, its signature is genuine ...
  history = tmp_path / "history"
  _, first = earlier_run(tmp_path, history, run_id="first", artifact_id=101)
  second_run, second = earlier_run(tmp_path, history, run_id="second", artifact_id=102)
  _copy_record(first, second)
  segment_file(history, second_run).unlink()
  this_run = run_into_history(history, run_id="this")
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
  _, first = earlier_run(tmp_path, history, run_id="first", artifact_id=101)
  second_run, second = earlier_run(tmp_path, history, run_id="second", artifact_id=102)
  _copy_record(first, second)
  second.uri = first.uri  # the copy made to look like its artifact's own
  segment_file(history, second_run).unlink()
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[first, second]
  )
  testing.assert_not_blessed(result, "PrivacyLedger artifact ids 101 and 102 hold the same record")


def test_a_record_signed_without_its_origin_is_not_blessed(tmp_path, ledger_key):
  # What an older dp_tfx signed (no origin), or a record whose origin was removed.
  history = tmp_path / "history"
  _, earlier_artifact = earlier_run(tmp_path, history)
  earlier_artifact.mlmd_artifact.custom_properties.pop(ledger_records.LEDGER_RECORD_ORIGIN_PROPERTY)
  this_run = run_into_history(history, run_id="this")
  result = testing.run_privacy_evaluator(
    this_run, SIGNED_POLICY, tmp_path / "eval", earlier_ledgers=[earlier_artifact]
  )
  testing.assert_not_blessed(result, "it names no artifact it was written for")


def test_this_runs_own_record_is_verified_under_a_policy_requiring_signatures(tmp_path, ledger_key):
  history = tmp_path / "history"
  this_run = run_into_history(history, run_id="this")
  artifact = testing.ledger_artifact(this_run, tmp_path / "own")
  executor.Executor._ledger({specs.PRIVACY_LEDGER_KEY: [artifact]}, key=signing.configured_key())
  # The file is as written; the record beside it in MLMD lost its signature.
  artifact.mlmd_artifact.custom_properties.pop(ledger_records.LEDGER_RECORD_SIGNATURE_PROPERTY)
  with pytest.raises(LedgerError, match="PrivacyLedger artifact id 1 is unsigned"):
    executor.Executor._ledger({specs.PRIVACY_LEDGER_KEY: [artifact]}, key=signing.configured_key())


def test_a_record_of_another_pipeline_is_refused(tmp_path):
  artifact = testing.ledger_artifact(one_run_ledger(), tmp_path / "a")
  origin = ledger_records.RecordOrigin(
    uri=artifact.uri, pipeline="other", pipeline_run_id="r", component="DPTrainer"
  )
  ledger_records.record_ledger(artifact, one_run_ledger(), origin)
  ledger_records.check_origin(artifact, "other")
  ledger_records.check_origin(artifact)  # the pipeline unknown: nothing to compare
  with pytest.raises(LedgerError, match="written by pipeline 'other', not this pipeline"):
    ledger_records.check_origin(artifact, "mine")
