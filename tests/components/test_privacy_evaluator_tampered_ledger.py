"""PrivacyEvaluator executor on a ledger file tampered with: deleted, edited, forged with its
hash recomputed, or set beside another model; every one fails closed."""

import json

import pytest

from dp_tfx.components import artifacts, specs, testing
from dp_tfx.components.privacy_evaluator import executor
from dp_tfx.ledger import LEDGER_FILE_NAME, LedgerError, _hash_body
from tests.components.privacy_evaluator_cases import POLICY, one_run_ledger


def _edit_body(edit):
  def tamper(path):
    document = json.loads(path.read_text())
    edit(document["body"])
    path.write_text(json.dumps(document))

  return tamper


def test_deleted_ledger(tmp_path):
  result = testing.run_privacy_evaluator(
    one_run_ledger(), POLICY, tmp_path, tamper=lambda p: p.unlink()
  )
  testing.assert_not_blessed(result, "no privacy ledger")


def test_edited_ledger(tmp_path):
  edit = _edit_body(lambda body: body["segments"][0].update(noise_multiplier=50.0))
  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, tamper=edit)
  testing.assert_not_blessed(result, "content_hash")


def test_a_re_hashed_ledger_is_refused_by_the_hash_the_trainer_recorded(tmp_path):
  # sigma 1.3 -> 5.0 with the file's own hash recomputed: only the MLMD record can tell.
  def forge(path):
    document = json.loads(path.read_text())
    document["body"]["segments"][0]["noise_multiplier"] = 5.0
    document["content_hash"] = _hash_body(document["body"])
    path.write_text(json.dumps(document))

  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, tamper=forge)
  testing.assert_not_blessed(result, "differs from the one the DPTrainer recorded in MLMD")


def test_a_ledger_artifact_without_the_trainers_recorded_hash_is_refused(tmp_path):
  artifact = artifacts.PrivacyLedger()
  artifact.uri = str(tmp_path)
  one_run_ledger().save(tmp_path / LEDGER_FILE_NAME)
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

  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, tamper=tamper)
  testing.assert_not_blessed(result, reason)


def test_ledger_for_another_model(tmp_path):
  def swap_model(path):  # an intact ledger (and MLMD record), beside another model's files
    (model_file,) = (tmp_path / "model").rglob("saved_model.pb")
    model_file.write_bytes(b"another model")

  result = testing.run_privacy_evaluator(one_run_ledger(), POLICY, tmp_path, tamper=swap_model)
  testing.assert_not_blessed(result, "another model")
