"""Signed ledgers: with a ledger key, records carry an HMAC that only the key holder can make;
a policy that requires signatures refuses unsigned, re-signed and edited-and-re-hashed records."""

import hashlib
import json

import pytest

from dp_tfx import signing
from dp_tfx.config import DPConfig
from dp_tfx.ledger import LedgerError, LedgerHistory, LedgerIntegrityError, PrivacyLedger
from dp_tfx.plan import TrainingPlan
from dp_tfx.policy import PolicyRefusal, PrivacyPolicy, refuse_unless_blessable, verification_key

KEY = "k" * 32
OTHER_KEY = "o" * 32


@pytest.fixture(autouse=True)
def _no_key_configured(monkeypatch):
  monkeypatch.delenv(signing.KEY_ENV, raising=False)
  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)


def _record_run(history_dir, steps=3):
  plan = TrainingPlan.from_config(DPConfig(noise_multiplier=1.0, batch_size=8, steps=5), 40)
  ledger = PrivacyLedger.open_history(history_dir, 40, "sha256:data")
  ledger.start_segment(plan)
  for _ in range(steps):
    ledger.record_step()
  return ledger


def _rehash(path, edit):
  """What an attacker without the key can do: edit the body and recompute the content hash."""
  document = json.loads(path.read_text())
  edit(document["body"])
  canonical = json.dumps(document["body"], sort_keys=True, separators=(",", ":"))
  document["content_hash"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
  path.write_text(json.dumps(document))


def test_with_a_key_every_record_is_signed_and_verifies(tmp_path, monkeypatch):
  monkeypatch.setenv(signing.KEY_ENV, KEY)
  ledger = _record_run(tmp_path / "history")
  ledger.save(tmp_path / "ledger.json")
  (segment_file,) = (tmp_path / "history").glob("segment-*.json")
  assert json.loads(segment_file.read_text())["signature"].startswith("hmac-sha256:")
  key = KEY.encode()
  assert [s.noisy_steps for s in LedgerHistory(tmp_path / "history", key).read()] == [3]
  loaded = PrivacyLedger.load(tmp_path / "ledger.json", key)
  assert loaded.with_history(key).noisy_steps == 3


def test_an_edited_and_rehashed_segment_passes_the_hash_but_not_the_signature(
  tmp_path, monkeypatch
):
  monkeypatch.setenv(signing.KEY_ENV, KEY)
  _record_run(tmp_path)
  (segment_file,) = tmp_path.glob("segment-*.json")
  _rehash(segment_file, lambda body: body["segment"].update(noise_multiplier=5.0))
  assert LedgerHistory(tmp_path).read()[0].noise_multiplier == 5.0  # the hash alone is fooled
  with pytest.raises(LedgerIntegrityError, match="signature does not match"):
    LedgerHistory(tmp_path, KEY.encode()).read()


def test_an_unsigned_record_or_one_signed_with_another_key_is_refused(tmp_path, monkeypatch):
  _record_run(tmp_path / "unsigned")
  with pytest.raises(LedgerIntegrityError, match="written without a key"):
    LedgerHistory(tmp_path / "unsigned", KEY.encode()).read()
  monkeypatch.setenv(signing.KEY_ENV, OTHER_KEY)
  _record_run(tmp_path / "other")
  with pytest.raises(LedgerIntegrityError, match="signed with another key"):
    LedgerHistory(tmp_path / "other", KEY.encode()).read()


def test_a_run_without_the_key_is_refused_where_records_are_signed_but_may_read_them(
  tmp_path, monkeypatch
):
  # Forgetting the key once used to train and leave an unsigned segment, which every later run
  # requiring signatures refused for good. Now it is refused before it writes anything.
  monkeypatch.setenv(signing.KEY_ENV, KEY)
  _record_run(tmp_path / "history").save(tmp_path / "ledger.json")
  written = sorted(p.read_bytes() for p in (tmp_path / "history").iterdir())
  monkeypatch.delenv(signing.KEY_ENV)
  for where, open_ in (
    ("ledger history", lambda: PrivacyLedger.open_history(tmp_path / "history", 40, "sha256:data")),
    ("ledger at", lambda: PrivacyLedger.open_for(tmp_path / "ledger.json", 40, "sha256:data")),
  ):
    with pytest.raises(
      LedgerError,
      match=f"the {where} .* holds signed records, but no ledger "
      "key is set \\(DP_TFX_LEDGER_KEY or DP_TFX_LEDGER_KEY_FILE\\)",
    ):
      open_()
  assert sorted(p.read_bytes() for p in (tmp_path / "history").iterdir()) == written
  # Reading, for a report, needs no key.
  assert PrivacyLedger.load(tmp_path / "ledger.json").with_history().noisy_steps == 3
  monkeypatch.setenv(signing.KEY_ENV, KEY)  # with it, the run goes on signing
  assert PrivacyLedger.open_history(tmp_path / "history", 40, "sha256:data").noisy_steps == 3


def test_the_key_can_come_from_a_file_such_as_a_mounted_secret(tmp_path, monkeypatch):
  key_file = tmp_path / "ledger-key"
  key_file.write_text(KEY + "\n")
  monkeypatch.setenv(signing.KEY_FILE_ENV, str(key_file))
  assert signing.configured_key() == KEY.encode()


@pytest.mark.parametrize(
  "environment, message",
  [
    ({signing.KEY_ENV: "short"}, "5 bytes; use at least 16"),
    ({signing.KEY_ENV: KEY, signing.KEY_FILE_ENV: "/x"}, "not both"),
    ({signing.KEY_FILE_ENV: "/nonexistent/ledger-key"}, "cannot be read"),
  ],
)
def test_a_wrongly_configured_key_is_a_clear_error(monkeypatch, environment, message):
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(signing.SigningKeyError, match=message):
    signing.configured_key()


def test_a_policy_requiring_signatures_refuses_a_run_without_a_key_before_it_trains(tmp_path):
  policy = PrivacyPolicy(max_epsilon=100.0, delta=1e-5, require_signature=True)
  plan = TrainingPlan.from_config(
    DPConfig(noise_multiplier=1.0, batch_size=8, steps=5, delta=1e-5), 40
  )
  planned = PrivacyLedger.open_history(tmp_path, 40, "sha256:data").if_trained(plan, 5)
  with pytest.raises(PolicyRefusal, match="requires signed ledgers"):
    refuse_unless_blessable(policy, planned)
  with pytest.raises(ValueError, match="requires signed ledgers"):
    verification_key(policy)
  assert verification_key(PrivacyPolicy(max_epsilon=1.0)) is None


def test_dp_tfx_report_verifies_signatures_when_a_key_is_set(tmp_path, monkeypatch, capsys):
  from dp_tfx.pipelines import cli

  monkeypatch.setenv(signing.KEY_ENV, KEY)
  _record_run(tmp_path / "history").save(tmp_path / "ledger.json")
  assert cli.main(["report", str(tmp_path / "ledger.json"), "--json", "--require-signature"]) == 0
  assert json.loads(capsys.readouterr().out)["signatures_verified"] is True
  (segment_file,) = (tmp_path / "history").glob("segment-*.json")
  _rehash(segment_file, lambda body: body["segment"].update(noise_multiplier=5.0))
  assert cli.main(["report", str(tmp_path / "ledger.json")]) == 2
  assert "signature does not match" in capsys.readouterr().err
  monkeypatch.delenv(signing.KEY_ENV)
  assert cli.main(["report", str(tmp_path / "ledger.json"), "--require-signature"]) == 2
  assert "--require-signature needs the ledger key" in capsys.readouterr().err
