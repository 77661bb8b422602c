"""The privacy ledger: round trip, tamper evidence, impossible facts, continuation."""

import json

import pytest

from dp_tfx import accounting
from dp_tfx.config import DPConfig
from dp_tfx.ledger import (LedgerError, LedgerIntegrityError, PrivacyLedger, dataset_fingerprint)
from dp_tfx.plan import TrainingPlan

PLAN = TrainingPlan.from_config(DPConfig(noise_multiplier=1.3, batch_size=256, epochs=15), 60000)


def _ledger(steps=PLAN.steps):
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:abc")
  ledger.start_segment(PLAN)
  for _ in range(steps):
    ledger.record_step()
  return ledger


def _rewrite(path, edit):
  """Edits the body and recomputes nothing: what a careless hand edit does."""
  document = json.loads(path.read_text())
  edit(document["body"])
  path.write_text(json.dumps(document))


def test_round_trip_keeps_facts_and_epsilon(tmp_path):
  ledger = _ledger()
  path = ledger.save(tmp_path / "ledger.json")
  loaded = PrivacyLedger.load(path)
  assert loaded.body() == ledger.body()
  assert loaded.noisy_steps == 3515
  assert loaded.epsilon(1e-5) == pytest.approx(0.864, rel=0.01)  # DESIGN.md reference


def test_edited_ledger_is_rejected(tmp_path):
  path = tmp_path / "ledger.json"
  _ledger().save(path)
  _rewrite(path, lambda body: body["segments"][0].update(noise_multiplier=5.0))
  with pytest.raises(LedgerIntegrityError, match="content_hash"):
    PrivacyLedger.load(path)


@pytest.mark.parametrize("field, value", [("noise_multiplier", -1.0), ("sampling_rate", 1.5),
                                          ("planned_steps", 0), ("sampling", "magic"),
                                          ("noisy_steps", 10**9)])
def test_impossible_facts_are_rejected_even_with_a_valid_hash(tmp_path, field, value):
  ledger = _ledger(steps=3)
  setattr(ledger.segments[0], field, value)
  path = tmp_path / "ledger.json"
  path.write_text(ledger.to_json())  # hash matches the (impossible) content
  with pytest.raises(LedgerError, match=field):
    PrivacyLedger.load(path)


def test_garbage_and_missing_files_are_ledger_errors(tmp_path):
  with pytest.raises(LedgerError, match="no privacy ledger"):
    PrivacyLedger.load(tmp_path / "absent.json")
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(LedgerError, match="not valid JSON"):
    PrivacyLedger.load(tmp_path / "bad.json")


def test_every_step_is_flushed_as_it_is_recorded(tmp_path):
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:abc")
  ledger.save(tmp_path / "ledger.json")
  ledger.start_segment(PLAN)
  for expected in range(1, 4):
    ledger.record_step()
    assert PrivacyLedger.load(tmp_path / "ledger.json").noisy_steps == expected


def test_runs_on_the_same_data_compose(tmp_path):
  path = tmp_path / "ledger.json"
  first = PrivacyLedger.open_for(path, 60000, "sha256:abc")
  first.start_segment(PLAN)
  for _ in range(100):
    first.record_step()
  second = PrivacyLedger.open_for(path, 60000, "sha256:abc")  # a restart on the same data
  second.start_segment(PLAN)
  for _ in range(100):
    second.record_step()
  assert second.noisy_steps == 200
  expected = accounting.compute_epsilon(sampling_rate=PLAN.sampling_rate,
                                        noise_multiplier=1.3, steps=200, delta=1e-5)
  assert second.epsilon(1e-5) == pytest.approx(expected, rel=1e-3)


def test_a_ledger_for_other_data_is_refused(tmp_path):
  path = tmp_path / "ledger.json"
  PrivacyLedger.open_for(path, 60000, "sha256:abc")
  with pytest.raises(LedgerError, match="other data"):
    PrivacyLedger.open_for(path, 60000, "sha256:def")


def test_shuffled_runs_are_not_rigorous():
  plan = TrainingPlan.from_config(
      DPConfig(noise_multiplier=1.1, batch_size=256, epochs=1, sampling="shuffle"), 60000)
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:abc")
  ledger.start_segment(plan)
  assert not ledger.rigorous
  assert _ledger(steps=1).rigorous


def test_fingerprint_depends_on_content_and_shape():
  import numpy as np
  a = np.arange(6, dtype=np.float32)
  assert dataset_fingerprint(a) == dataset_fingerprint(a.copy())
  assert dataset_fingerprint(a) != dataset_fingerprint(a.reshape(2, 3))
  assert dataset_fingerprint(a) != dataset_fingerprint(a + 1)
