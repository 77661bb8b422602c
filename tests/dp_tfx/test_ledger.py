"""The privacy ledger: round trip, tamper evidence, impossible facts, continuation."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from dp_tfx import accounting, files
from dp_tfx.config import DPConfig
from dp_tfx.ledger import (
  RESERVATION_STALE_SECONDS,
  LedgerError,
  LedgerIntegrityError,
  PrivacyLedger,
  _hash_body,
  check_chain,
  dataset_fingerprint,
  read_history,
)
from dp_tfx.plan import TrainingPlan
from dp_tfx.policy import PrivacyPolicy, decide

PLAN = TrainingPlan.from_config(DPConfig(noise_multiplier=1.3, batch_size=256, epochs=15), 60000)
REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


def _plan(dataset_size, noise_multiplier=1.1, batch_size=200, **steps):
  return TrainingPlan.from_config(
    DPConfig(noise_multiplier=noise_multiplier, batch_size=batch_size, **steps), dataset_size
  )


def _rdp_epsilon(runs, delta):
  """epsilon of runs [(q, sigma, steps)] composed, straight from dp_accounting (RDP composes
  exactly, so the order and grouping of the steps do not matter)."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  for q, sigma, steps in runs:
    accountant.compose(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
  return accountant.get_epsilon(delta)


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
  assert loaded.epsilon(1e-5) == pytest.approx(0.864, rel=0.01)  # docs/architecture.md reference


def test_edited_ledger_is_rejected(tmp_path):
  path = tmp_path / "ledger.json"
  _ledger().save(path)
  _rewrite(path, lambda body: body["segments"][0].update(noise_multiplier=5.0))
  with pytest.raises(LedgerIntegrityError, match="content_hash"):
    PrivacyLedger.load(path)


@pytest.mark.parametrize(
  "field, value",
  [
    ("noise_multiplier", -1.0),
    ("sampling_rate", 1.5),
    ("planned_steps", 0),
    ("sampling", "magic"),
    ("noisy_steps", 10**9),
    ("dataset_size", 10**309),
    ("reserved_steps", -1),
    ("finished_at", 1),
  ],
)
def test_impossible_facts_are_rejected_even_with_a_valid_hash(tmp_path, field, value):
  ledger = _ledger(steps=3)
  setattr(ledger.segments[0], field, value)
  path = tmp_path / "ledger.json"
  path.write_text(ledger.to_json())  # hash matches the (impossible) content
  with pytest.raises(LedgerError, match=field):
    PrivacyLedger.load(path)


@pytest.mark.parametrize(
  "edit, reason",
  [
    (
      lambda facts: facts.update(noise_multiplierr=5.0),
      r"unknown segment field\(s\) \['noise_multiplierr'\]",
    ),
    (lambda facts: facts.pop("noisy_steps"), "missing segment fields"),
  ],
)
def test_unknown_or_missing_segment_fields_are_ledger_errors(tmp_path, edit, reason):
  from dp_tfx.ledger import _hash_body

  document = json.loads(_ledger(steps=3).to_json())
  edit(document["body"]["segments"][0])
  document["content_hash"] = _hash_body(document["body"])
  (tmp_path / "ledger.json").write_text(json.dumps(document))
  with pytest.raises(LedgerError, match=reason):
    PrivacyLedger.load(tmp_path / "ledger.json")


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
  first.finish_segment()  # its fit ended
  second = PrivacyLedger.open_for(path, 60000, "sha256:abc")  # a restart on the same data
  second.start_segment(PLAN)
  for _ in range(100):
    second.record_step()
  assert second.noisy_steps == 200
  expected = accounting.compute_epsilon(
    sampling_rate=PLAN.sampling_rate, noise_multiplier=1.3, steps=200, delta=1e-5
  )
  assert second.epsilon(1e-5) == pytest.approx(expected, rel=1e-3)


def test_a_run_on_other_data_continues_the_ledger_and_composes(tmp_path):
  # One example less, or any other change of the data, never starts a fresh budget.
  path = tmp_path / "ledger.json"
  first = PrivacyLedger.open_for(path, 4000, "sha256:abc")
  first.start_segment(_plan(4000, epochs=2))
  for _ in range(40):
    first.record_step()
  first.finish_segment()
  second = PrivacyLedger.open_for(path, 3999, "sha256:def")
  second.start_segment(_plan(3999, epochs=2))
  for _ in range(39):
    second.record_step()
  loaded = PrivacyLedger.load(path)
  assert [s.dataset_size for s in loaded.segments] == [4000, 3999]
  assert loaded.noisy_steps == 79 and loaded.dataset_size == 3999
  assert loaded.epsilon(1e-5, "rdp") == pytest.approx(
    _rdp_epsilon([(200 / 4000, 1.1, 40), (200 / 3999, 1.1, 39)], 1e-5), rel=1e-9
  )
  assert loaded.largest_dataset_size == 4000


def test_a_ledger_file_written_by_another_process_meanwhile_fails_closed(tmp_path):
  # The review's case: two processes continuing one ledger file each rewrote it with their own
  # view, and the file kept 10 of the 20 steps taken. Now the second writer finds the file
  # changed and writes nothing: its step is never taken.
  path = tmp_path / "ledger.json"
  a = PrivacyLedger.open_for(path, 4000, "sha256:abc")
  b = PrivacyLedger.open_for(path, 4000, "sha256:abc")  # both opened before either reserved
  a.start_segment(_plan(4000, steps=10))
  a.record_step()
  held = path.read_bytes()
  with pytest.raises(
    LedgerError,
    match=r"was rewritten since this run last read or wrote it: "
    r"another process is continuing it.*nothing was written.*ledger_history=DIR",
  ):
    b.start_segment(_plan(4000, steps=10))
  assert path.read_bytes() == held and b.current_segment is None and b.segments == []
  c = PrivacyLedger.load(path)  # another process that got past open_for: it writes first
  c.start_segment(_plan(4000, steps=10))
  with pytest.raises(LedgerError, match="was rewritten"):
    a.record_step()  # the step it was about to take is not taken
  assert PrivacyLedger.load(path).noisy_steps == 1


def test_a_ledger_file_deleted_or_found_in_place_is_never_written_over(tmp_path):
  path = tmp_path / "ledger.json"
  run = PrivacyLedger.open_for(path, 4000, "sha256:abc")
  run.start_segment(_plan(4000, steps=10))
  path.unlink()
  with pytest.raises(LedgerError, match="was deleted since this run wrote it"):
    run.record_step()
  _ledger(steps=3).save(path)
  with pytest.raises(LedgerError, match="is there already, and this run did not read it"):
    _ledger(steps=1).save(path)
  assert PrivacyLedger.load(path).noisy_steps == 3


def test_a_ledger_saved_again_under_another_spelling_of_its_path_is_the_same_file(
  tmp_path, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  ledger = _ledger(steps=3)
  ledger.save(tmp_path / "ledger.json")
  ledger.save("ledger.json")  # was refused: "another process started meanwhile"
  ledger.save("./sub/../ledger.json")
  ledger.record_step()
  assert PrivacyLedger.load("ledger.json").noisy_steps == 4
  loaded = PrivacyLedger.load("ledger.json")  # read by a relative path, saved by another
  loaded.set_model_digest("sha256:model")
  loaded.save(tmp_path / "ledger.json")
  assert PrivacyLedger.load(tmp_path / "ledger.json").model_digest == "sha256:model"


def test_a_ledger_file_a_run_is_training_on_is_not_opened(tmp_path):
  path = tmp_path / "ledger.json"
  training = PrivacyLedger.open_for(path, 4000, "sha256:abc")
  training.start_segment(_plan(4000, steps=10))
  training.record_step()
  with pytest.raises(
    LedgerError,
    match=r"is in use: run \w+ reserved 10 noisy steps and is still "
    r"training \(last written \d+ s ago, its reservation lapses at \S+Z unless "
    r"it writes again \(5 min after its last write\); if that run was killed: "
    r"dp-tfx release-reservation \S+ --segment segment-\S+ --force\)"
    r".*ledger_history=DIR",
  ):
    PrivacyLedger.open_for(path, 4000, "sha256:abc")
  training.finish_segment()
  assert PrivacyLedger.open_for(path, 4000, "sha256:abc").noisy_steps == 1


def test_a_ledger_file_of_a_killed_run_opens_once_it_is_stale(tmp_path):
  path = tmp_path / "ledger.json"
  killed = PrivacyLedger.open_for(path, 4000, "sha256:abc")
  killed.start_segment(_plan(4000, steps=10))
  killed.record_step()
  del killed  # killed: its segment is never finished
  long_ago = time.time() - RESERVATION_STALE_SECONDS - 60  # the storage's clock, not updated_at
  os.utime(path, (long_ago, long_ago))
  again = PrivacyLedger.open_for(path, 4000, "sha256:abc")
  again.start_segment(_plan(4000, steps=10))
  again.record_step()
  assert PrivacyLedger.load(path).noisy_steps == 2


def test_a_ledger_counting_another_privacy_unit_is_refused(tmp_path):
  path = tmp_path / "ledger.json"
  PrivacyLedger.open_for(path, 60000, "sha256:abc")
  with pytest.raises(LedgerError, match="counts examples, this run sequences"):
    PrivacyLedger.open_for(path, 60000, "sha256:abc", privacy_unit="sequence")


def test_shuffled_runs_are_not_rigorous():
  plan = TrainingPlan.from_config(
    DPConfig(noise_multiplier=1.1, batch_size=256, epochs=1, sampling="shuffle"), 60000
  )
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:abc")
  ledger.start_segment(plan)
  assert ledger.rigorous  # a shuffled segment that took no step spent nothing
  ledger.record_step()
  assert not ledger.rigorous
  assert _ledger(steps=1).rigorous


def test_fingerprint_depends_on_content_and_shape():
  import numpy as np

  a = np.arange(6, dtype=np.float32)
  assert dataset_fingerprint(a) == dataset_fingerprint(a.copy())
  assert dataset_fingerprint(a) != dataset_fingerprint(a.reshape(2, 3))
  assert dataset_fingerprint(a) != dataset_fingerprint(a + 1)


# -- the ledger history: concurrent runs, killed runs, a budget per data source -------------------


def _concurrent_runs(history, runs):
  """Runs [(dataset_size, steps)] at once in threads that all open the history before any of them
  records, then record their steps in lockstep (step 1 of every run, then step 2, ...): the
  interleaving that lost updates when every run rewrote one shared file."""
  barrier = threading.Barrier(len(runs))
  ledgers, errors = [None] * len(runs), []

  def run(index, size, steps):
    try:
      ledger = PrivacyLedger.open_history(
        history, size, f"sha256:data-{index}", data_source="digits", run_id=f"run-{index}"
      )
      assert ledger.noisy_steps == 0  # nobody has recorded anything yet
      barrier.wait()
      ledger.start_segment(_plan(size, steps=steps))
      for step in range(max(s for _, s in runs)):
        if step < steps:
          ledger.record_step()
        barrier.wait()
      ledgers[index] = ledger
    except BaseException as error:  # pragma: no cover - reported below
      errors.append(error)
      barrier.abort()

  threads = [
    threading.Thread(target=run, args=(i, size, steps)) for i, (size, steps) in enumerate(runs)
  ]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors, errors
  return ledgers


@pytest.mark.parametrize(
  "runs",
  [[(4000, 40), (4000, 40)], [(4000, 40), (3999, 25), (5000, 33)]],
  ids=["two-runs", "three-runs-on-changed-data"],
)
def test_concurrent_runs_on_one_history_count_every_step(tmp_path, runs):
  history = tmp_path / "history"
  ledgers = _concurrent_runs(history, runs)
  segments = read_history(history)
  assert sorted(s.noisy_steps for s in segments) == sorted(steps for _, steps in runs)
  assert len({s.segment_id for s in segments}) == len(runs)  # one file each, none overwritten
  expected = _rdp_epsilon([(200 / size, 1.1, steps) for size, steps in runs], 1e-5)
  for ledger in ledgers:  # each run, at its end, sees every run: its own and the others'
    ledger.refresh()
    assert ledger.noisy_steps == sum(steps for _, steps in runs)
    assert ledger.epsilon(1e-5, "rdp") == pytest.approx(expected, rel=1e-9)
  later = PrivacyLedger.open_history(history, 4000, "sha256:later")
  assert later.noisy_steps == sum(steps for _, steps in runs)
  assert sorted(run["run_id"] for run in later.runs()) == [f"run-{i}" for i in range(len(runs))]
  # PLD agrees with the composition of each run's own event (q, sigma, steps).
  pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
  for size, steps in runs:
    pld.compose(
      dp_accounting.PoissonSampledDpEvent(200 / size, dp_accounting.GaussianDpEvent(1.1)), steps
    )
  assert later.epsilon(1e-5) == pytest.approx(pld.get_epsilon(1e-5), rel=1e-3)


@pytest.mark.slow  # three Python processes that each import TensorFlow: ~35 s on 2 cores
def test_concurrent_processes_count_every_step_and_a_killed_one_keeps_its_steps(tmp_path):
  history, work = tmp_path / "history", tmp_path / "work"
  work.mkdir()
  environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}

  def start(name, steps):
    return subprocess.Popen(
      [
        sys.executable,
        "-m",
        "tests.dp_tfx.ledger_worker",
        str(history),
        "4000",
        str(steps),
        str(work),
        name,
      ],
      cwd=REPOSITORY,
      env=environment,
      stderr=subprocess.PIPE,
    )

  workers = {"a": start("a", 40), "b": start("b", 40), "killed": start("killed", 2000)}
  deadline = time.time() + 240
  while not all((work / f"{name}.ready").exists() for name in workers):
    assert time.time() < deadline and all(p.poll() is None for p in workers.values()), [
      p.stderr.read() for p in workers.values() if p.poll() is not None
    ]
    time.sleep(0.05)
  assert {(work / f"{name}.ready").read_text() for name in workers} == {"0"}  # all saw nothing
  (work / "go").write_text("")
  while (
    len((work / "killed.ran").read_text().splitlines() if (work / "killed.ran").exists() else [])
    < 30
  ):
    assert time.time() < deadline
    time.sleep(0.01)
  workers["killed"].send_signal(signal.SIGKILL)
  for name in ("a", "b"):
    assert workers[name].wait(timeout=120) == 0, workers[name].stderr.read()
  workers["killed"].wait(timeout=60)
  ran = len((work / "killed.ran").read_text().splitlines())
  by_run = {
    run["run_id"]: run["noisy_steps"]
    for run in PrivacyLedger.open_history(history, 4000, "sha256:next").runs()
  }
  assert by_run["a"] == by_run["b"] == 40
  assert ran <= by_run["killed"] <= ran + 1  # every step that ran, at worst one more


def test_a_run_continuing_after_a_crash_adds_to_its_steps(tmp_path):
  crashed = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  crashed.start_segment(_plan(4000, epochs=2))
  for _ in range(7):
    crashed.record_step()
  del crashed  # killed: nothing is closed or finalised
  again = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  assert again.noisy_steps == 7
  again.start_segment(_plan(4000, epochs=2))
  for _ in range(40):
    again.record_step()
  assert sum(s.noisy_steps for s in read_history(tmp_path)) == 47


def test_a_data_change_between_runs_composes_and_delta_covers_the_largest_dataset(tmp_path):
  # The case: 40 steps on 4000 examples, then 15 epochs on 3999 in the same history.
  first = PrivacyLedger.open_history(tmp_path, 4000, "sha256:4000")
  first.start_segment(_plan(4000, epochs=2))
  for _ in range(40):
    first.record_step()
  second = PrivacyLedger.open_history(tmp_path, 3999, "sha256:3999")
  plan = _plan(3999, epochs=15)
  second.start_segment(plan)
  for _ in range(plan.steps):
    second.record_step()
  assert second.noisy_steps == 40 + plan.steps
  assert second.epsilon(1e-5, "rdp") == pytest.approx(
    _rdp_epsilon([(200 / 4000, 1.1, 40), (200 / 3999, 1.1, plan.steps)], 1e-5), rel=1e-9
  )
  # The second run alone (a fresh history keyed by the data's content, as before) was pushed at
  # epsilon 4.83 under max_epsilon 5; the two compose to 5.14.
  alone = accounting.compute_epsilon(
    sampling_rate=200 / 3999, noise_multiplier=1.1, steps=plan.steps, delta=1e-5
  )
  decision = decide(PrivacyPolicy(max_epsilon=5.0, delta=1e-5), second)
  assert alone == pytest.approx(4.83, abs=0.01)
  assert decision.epsilon == pytest.approx(5.14, abs=0.01)
  assert not decision.blessed and "exceeds the policy's max_epsilon" in decision.reasons[0]
  # delta "1/N" is one over the largest dataset the total covers.
  assert decide(PrivacyPolicy(max_epsilon=100.0), second).delta == 1 / 4000
  assert (
    "N = 4000, the largest dataset"
    in decide(PrivacyPolicy(max_epsilon=100.0, delta=1 / 3999), second).reasons[0]
  )


def _history_with_two_runs(directory):
  for index in range(2):
    ledger = PrivacyLedger.open_history(directory, 4000, "sha256:abc")
    ledger.start_segment(_plan(4000, epochs=2))
    for _ in range(10):
      ledger.record_step()
  return ledger


def _segment_files(directory):
  return sorted(pathlib.Path(directory).glob("segment-*.json"))


@pytest.mark.parametrize(
  "damage, message",
  [
    (
      lambda p: p.write_text(p.read_text().replace('"noisy_steps": 10', '"noisy_steps": 1')),
      "content_hash",
    ),
    (lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]), "not valid JSON"),
    (lambda p: p.write_text(""), "not valid JSON"),
    (lambda p: p.rename(p.with_name("segment-renamed.json")), "does not match its segment_id"),
  ],
  ids=["edited", "truncated", "emptied", "renamed"],
)
def test_a_damaged_segment_file_is_refused_with_its_name(tmp_path, damage, message):
  _history_with_two_runs(tmp_path)
  damaged = _segment_files(tmp_path)[0]
  damage(damaged)
  with pytest.raises(LedgerError, match=message) as raised:
    read_history(tmp_path)
  assert str(tmp_path) in str(raised.value)
  with pytest.raises(LedgerError):  # a new run refuses to start (and spends nothing)
    PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")


def test_the_evaluators_total_is_the_history_now_checked_against_the_snapshot(tmp_path):
  history = tmp_path / "history"
  ledger = _history_with_two_runs(history)
  ledger.refresh()
  ledger.save(tmp_path / "artifact.json")
  snapshot = PrivacyLedger.load(tmp_path / "artifact.json")
  assert snapshot.noisy_steps == 20 and snapshot.history_dir == str(history)
  # A run that finished later (or is still running) counts in the verdict on this one.
  later = PrivacyLedger.open_history(history, 4000, "sha256:abc")
  later.start_segment(_plan(4000, epochs=2))
  for _ in range(5):
    later.record_step()
  total = snapshot.with_history()
  assert total.noisy_steps == 25 and total.model_digest == snapshot.model_digest
  # A segment the snapshot counts may not vanish or shrink, even with a recomputed hash.
  first = _segment_files(history)[0]
  document = json.loads(first.read_text())
  document["body"]["segment"]["noisy_steps"] = 3
  document["content_hash"] = _hash_body(document["body"])
  first.write_text(json.dumps(document))
  with pytest.raises(LedgerError, match="shortened"):
    snapshot.with_history()
  first.unlink()
  with pytest.raises(LedgerError, match="missing from the ledger history"):
    snapshot.with_history()


def test_a_format_1_ledger_in_the_history_keeps_counting(tmp_path):
  # What the DPTrainer wrote before segment files: one whole ledger per exact dataset.
  old = PrivacyLedger(dataset_size=4000, dataset_fingerprint="sha256:old")
  old.start_segment(_plan(4000, epochs=2))
  old.segments[0].noisy_steps = 40
  body = old.body()
  body["format_version"] = 1
  for name in ("data_source", "run_id", "history_dir"):
    del body[name]
  for name in ("dataset_size", "dataset_fingerprint", "data_source", "run_id", "segment_id"):
    del body["segments"][0][name]
  (tmp_path / ("ab" * 16 + ".json")).write_text(
    json.dumps({"body": body, "content_hash": _hash_body(body)})
  )
  ledger = PrivacyLedger.open_history(tmp_path, 3999, "sha256:new")
  assert ledger.noisy_steps == 40 and ledger.segments[0].dataset_size == 4000
  ledger.start_segment(_plan(3999, epochs=1))
  ledger.record_step()
  assert sum(s.noisy_steps for s in read_history(tmp_path)) == 41
  assert (tmp_path / ("ab" * 16 + ".json")).read_text().count('"noisy_steps": 40') == 1


def test_a_history_refuses_another_privacy_unit_and_whole_ledgers(tmp_path):
  _history_with_two_runs(tmp_path / "h")
  with pytest.raises(LedgerError, match="counts examples, this run sequences"):
    PrivacyLedger.open_history(tmp_path / "h", 4000, "sha256:abc", privacy_unit="sequence")
  _ledger(steps=3).save(tmp_path / "h" / "copied-artifact.json")
  with pytest.raises(LedgerError, match="does not belong in a ledger history"):
    read_history(tmp_path / "h")


def test_temporaries_of_writes_in_flight_are_not_segments(tmp_path):
  _history_with_two_runs(tmp_path)
  (tmp_path / (".segment-x.json-" + "0123456789abcdef" * 2)).write_text("{half a wri")
  assert sum(s.noisy_steps for s in read_history(tmp_path)) == 20


def test_a_temporary_renamed_into_place_while_the_history_is_read_is_skipped(tmp_path, monkeypatch):
  # A concurrent write's temporary, listed, then renamed before its age is read: the reader
  # (another run's pre-check) once crashed with NotFoundError.
  _history_with_two_runs(tmp_path)
  listdir = files.listdir
  monkeypatch.setattr(
    files,
    "listdir",
    lambda directory: listdir(directory) + [".segment-x.json-" + "0123456789abcdef" * 2],
  )  # gone by the time it is looked at
  assert sum(s.noisy_steps for s in read_history(tmp_path)) == 20


def test_a_record_hidden_under_a_temporarys_name_is_refused_once_it_stays(tmp_path):
  import os
  import time

  _history_with_two_runs(tmp_path)
  record = sorted(tmp_path.glob("segment-*.json"))[0]
  hidden = record.with_name(f".{record.name}-" + "0123456789abcdef" * 2)
  record.rename(hidden)
  old = time.time() - 301
  os.utime(hidden, (old, old))
  with pytest.raises(LedgerError, match="has the name of a write in progress but is over 300 s"):
    read_history(tmp_path)


def _archive(path):
  (path.parent / "archive").mkdir()
  path.rename(path.parent / "archive" / path.name)


@pytest.mark.parametrize(
  "hide",
  [
    lambda p: p.rename(p.with_name(p.name + ".bak")),
    lambda p: p.rename(p.with_name("." + p.name)),
    lambda p: p.rename(p.with_suffix(".JSON")),
    _archive,
    lambda p: (p.parent / "README").write_text("notes"),
  ],
  ids=["bak", "hidden", "upper-case", "subdirectory", "other-file"],
)
def test_anything_but_a_record_in_the_history_is_refused_so_none_drops_out(tmp_path, hide):
  # Renaming a run's record so the reader skips it would lower the total without a trace.
  _history_with_two_runs(tmp_path)
  hide(_segment_files(tmp_path)[0])
  with pytest.raises(LedgerError, match="is not a ledger record|it was renamed"):
    read_history(tmp_path)


def test_a_segment_deleted_while_a_run_trains_stays_in_its_total(tmp_path):
  history = tmp_path / "history"
  _history_with_two_runs(history)
  run = PrivacyLedger.open_history(history, 4000, "sha256:abc")
  run.start_segment(_plan(4000, epochs=2))
  run.record_step()
  _segment_files(history)[0].unlink()  # an earlier run's record, deleted mid-run
  with pytest.raises(LedgerError, match="missing from the ledger history"):
    run.refresh()
  assert run.noisy_steps == 21  # the snapshot still counts the deleted run's 10 steps
  run.save(tmp_path / "snapshot.json")
  with pytest.raises(LedgerError, match="missing from the ledger history"):
    PrivacyLedger.load(tmp_path / "snapshot.json").with_history()


def test_duplicate_segment_ids_and_json_a_parser_chokes_on_are_ledger_errors(tmp_path):
  _history_with_two_runs(tmp_path / "a")
  first = _segment_files(tmp_path / "a")[0]
  (tmp_path / "a" / "copy.json").write_text(first.read_text())
  with pytest.raises(LedgerError):  # a copy under another name: refused, never counted twice
    read_history(tmp_path / "a")
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "deep.json").write_text("[" * 100000 + "]" * 100000)
  with pytest.raises(LedgerError, match="not valid JSON"):
    read_history(tmp_path / "b")
  (tmp_path / "b" / "deep.json").write_text('{"body": ' + "9" * 5000 + "}")
  with pytest.raises(LedgerError, match="not valid JSON"):
    read_history(tmp_path / "b")


def test_a_segment_file_is_never_replaced_by_another_run(tmp_path, monkeypatch):
  from dp_tfx.ledger import privacy_ledger as ledger_module

  ledger = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  ledger.start_segment(_plan(4000, epochs=2))
  taken = ledger.current_segment.segment_id
  monkeypatch.setattr(ledger_module, "_new_segment_id", lambda: taken)
  other = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  with pytest.raises(FileExistsError):
    other.start_segment(_plan(4000, epochs=2))


def test_a_segment_deleted_or_shortened_after_a_later_run_opened_the_history_is_found(tmp_path):
  # No snapshot and no MLMD record needed: the later run's segment names what it saw, inside
  # its own hash.
  first = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  first.start_segment(_plan(4000, epochs=2))
  for _ in range(10):
    first.record_step()
  first.finish_segment()
  later = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  later.start_segment(_plan(4000, epochs=2))
  assert later.current_segment.predecessors == [
    {"segment_id": first.segments[0].segment_id, "noisy_steps": 10}
  ]
  assert [s.noisy_steps for s in read_history(tmp_path)] == [10, 0]
  first_file = tmp_path / (first.segments[0].segment_id + ".json")
  written = first_file.read_text()
  document = json.loads(written)
  document["body"]["segment"]["noisy_steps"] = 3
  document["content_hash"] = _hash_body(document["body"])  # re-hashed: its own check passes
  first_file.write_text(json.dumps(document))
  judged = lambda: check_chain(read_history(tmp_path), str(tmp_path))
  with pytest.raises(LedgerError, match="records 3 noisy steps, fewer than the 10 segment .* saw"):
    judged()
  with pytest.raises(LedgerError, match="shortened"):  # no later run starts on it
    PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  first_file.unlink()
  with pytest.raises(
    LedgerError,
    match=f"{first.segments[0].segment_id}, which segment .* saw "
    "when it started, is missing from the ledger history",
  ):
    judged()
  with pytest.raises(LedgerError, match="is missing"):
    PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  first_file.write_text(written)  # put back, the history is whole again
  judged()
  assert [s.noisy_steps for s in read_history(tmp_path)] == [10, 0]


def test_the_chain_is_inside_the_segments_hash(tmp_path):
  first = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  first.start_segment(_plan(4000, epochs=2))
  first.record_step()
  later = PrivacyLedger.open_history(tmp_path, 4000, "sha256:abc")
  later.start_segment(_plan(4000, epochs=2))
  later_file = tmp_path / (later.current_segment.segment_id + ".json")
  _rewrite(later_file, lambda body: body["segment"].update(predecessors=[]))
  with pytest.raises(LedgerError, match="content_hash"):
    read_history(tmp_path)
