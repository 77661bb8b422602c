"""A data source's budget lives under the budget root, whatever directory a run writes to; a new
budget is an explicit, recorded act; the same data under another name is refused."""

import json
import os
import threading

import keras
import pytest

import dp_tfx
from dp_tfx import budget, record_digest
from dp_tfx.ledger import LedgerError, dataset_fingerprint, read_history
from tests.dp_tfx import models


def _train(history, x, y, data_source="digits"):
  dp_model = dp_tfx.make_private(
    models.dense_model(),
    dp_tfx.DPConfig(noise_multiplier=1.0, batch_size=8, steps=3, delta=1e-5),
    ledger_history=history,
    data_source=data_source,
  )
  dp_model.compile(
    optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  )
  dp_model.fit(x, y, verbose=0)
  return dp_model


def test_the_default_root_is_the_users_state_directory_unless_set(monkeypatch, tmp_path):
  monkeypatch.delenv(budget.BUDGET_ROOT_ENV)
  monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
  assert budget.default_budget_root() == str(tmp_path / "state" / "dp_tfx" / "budgets")
  monkeypatch.setenv(budget.BUDGET_ROOT_ENV, "gs://team/budgets")
  assert budget.default_budget_root() == "gs://team/budgets"


def test_a_data_source_has_one_history_whatever_else_changes(tmp_path):
  first = budget.history_dir(str(tmp_path), "mnist:embedded")
  assert first == budget.history_dir(str(tmp_path), "mnist:embedded")
  assert os.path.basename(first) == "budget-1"
  # Names that one slug would spell alike still get budgets of their own.
  assert budget.source_directory(str(tmp_path), "a/b") != budget.source_directory(
    str(tmp_path), "a:b"
  )
  with pytest.raises(ValueError, match="non-empty name"):
    budget.history_dir(str(tmp_path), " ")


def test_a_new_budget_is_explicit_recorded_and_exclusive(tmp_path):
  x, y = models.batch_for("dense", 40, seed=1)
  root = str(tmp_path)
  with pytest.raises(ValueError, match="has no run"):
    budget.start_new_budget(root, "digits", "nothing trained yet")
  first = budget.history_dir(root, "digits")
  _train(first, x, y)
  with pytest.raises(ValueError, match="say why"):
    budget.start_new_budget(root, "digits", "  ")
  assert budget.history_dir(root, "digits") == first  # refused: nothing changed
  new = budget.start_new_budget(
    root, "digits", "the old models were all deleted", requested_by="alice"
  )
  assert budget.history_dir(root, "digits") == new != first
  record = budget.fresh_start(new)
  assert record["requested_by"] == "alice"
  assert record["reason"] == "the old models were all deleted"
  assert record["supersedes"] == {"history_dir": first, "runs": 1, "noisy_steps": 3}
  assert budget.fresh_start(first) is None
  assert [s.noisy_steps for s in read_history(first)] == [3]  # kept, not deleted
  assert read_history(new) == []
  # A second request for the same new budget (two people at once) is refused, not merged.
  os.remove(budget.history_dir(root, "digits") + ".json")
  with open(new + ".json", "w") as handle:
    json.dump(record, handle)
  with pytest.raises(ValueError, match="has no run"):
    budget.start_new_budget(root, "digits", "again")


def test_the_same_data_under_another_name_is_refused_naming_its_budget(tmp_path):
  x, y = models.batch_for("dense", 40, seed=1)
  root = str(tmp_path)
  _train(budget.history_dir(root, "digits"), x, y)
  fingerprint = dataset_fingerprint(x, y)
  budget.refuse_data_budgeted_elsewhere(root, "digits", fingerprint)  # its own budget: fine
  with pytest.raises(LedgerError, match="under the data source 'digits'"):
    budget.refuse_data_budgeted_elsewhere(root, "digits, renamed", fingerprint)
  # Other data under another name is another budget.
  budget.refuse_data_budgeted_elsewhere(root, "other", dataset_fingerprint(x[:-1], y[:-1]))


def test_a_budget_folder_made_by_hand_opens_no_fresh_budget(tmp_path):
  x, y = models.batch_for("dense", 40, seed=1)
  root = str(tmp_path)
  _train(budget.history_dir(root, "digits"), x, y)
  source = budget.source_directory(root, "digits")
  os.makedirs(os.path.join(source, "budget-2"))  # no record of who started it
  with pytest.raises(LedgerError, match="budget-2 .* has no record of who started it"):
    budget.history_dir(root, "digits")
  os.rmdir(os.path.join(source, "budget-2"))
  os.makedirs(os.path.join(source, "budget-3"))  # a gap
  with pytest.raises(LedgerError, match=r"numbered \[1, 3\], with a gap"):
    budget.history_dir(root, "digits")


def test_data_claimed_by_one_source_is_refused_to_another_in_any_order(tmp_path):
  # The record digest (not the ledger's fingerprint of one order, or of one Poisson draw):
  # the same records reached again under another name, reordered, are refused.
  root = str(tmp_path)
  records = [b"example-%d" % i for i in range(30)]
  budget.claim_data(root, "digits", record_digest.of_records(records))
  budget.claim_data(root, "digits", record_digest.of_records(records[::-1]))  # its own: fine
  with pytest.raises(LedgerError, match="under the data source 'digits' .*claim"):
    budget.claim_data(root, "digits, renamed", record_digest.of_records(records[::-1]))
  budget.claim_data(root, "other", record_digest.of_records(records[:-1]))  # other data
  # A history beside the claims is still a data source's: the claims folder is not one.
  budget.refuse_data_budgeted_elsewhere(root, "third", "sha256:" + "0" * 64)


def test_of_two_sources_claiming_the_same_data_at_once_one_is_refused(tmp_path):
  digest = record_digest.of_records([b"a", b"b"])
  outcomes = []

  def claim(source):
    try:
      budget.claim_data(str(tmp_path), source, digest)
      outcomes.append("claimed")
    except LedgerError:
      outcomes.append("refused")

  threads = [threading.Thread(target=claim, args=(f"source {i}",)) for i in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(outcomes) == ["claimed"] + ["refused"] * 7


def test_an_unreadable_claim_refuses_the_data_to_everyone(tmp_path):
  digest = record_digest.of_records([b"a"])
  budget.claim_data(str(tmp_path), "digits", digest)
  (claim,) = (tmp_path / "data-claims").iterdir()
  claim.write_text("{not json")
  for source in ("digits", "other"):
    with pytest.raises(LedgerError, match="is unreadable"):
      budget.claim_data(str(tmp_path), source, digest)
  with pytest.raises(ValueError, match="must be a record digest"):
    budget.claim_data(str(tmp_path), "digits", "sha256:" + "0" * 64)
