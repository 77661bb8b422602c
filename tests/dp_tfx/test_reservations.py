"""Reservations: a fit records the steps it will run before its policy pre-check, and every
pre-check counts the unfinished reservations of other runs, so concurrent runs cannot all pass
it on the same budget. Epsilon itself only counts the steps that ran."""

import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import keras
import pytest

import dp_tfx
from dp_tfx import accounting, files, signing
from dp_tfx import ledger as ledger_module
from dp_tfx.config import DPConfig
from dp_tfx.ledger import privacy_ledger
from dp_tfx.ledger import (
  HEARTBEAT_SECONDS,
  RESERVATION_STALE_SECONDS,
  LedgerHistory,
  LedgerIntegrityError,
  PrivacyLedger,
  _hash_body,
  read_history,
)
from dp_tfx.plan import TrainingPlan
from dp_tfx.policy import PolicyRefusal, PrivacyPolicy, refuse_unless_blessable
from tests.dp_tfx import models
from tests.dp_tfx.callbacks import MeanwhileAndStop

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
PLAN = TrainingPlan.from_config(DPConfig(noise_multiplier=1.1, batch_size=200, steps=100), 4000)
# 60 steps of PLAN: one run of 40 passes, 40 and 10 pass, two runs of 40 do not.
POLICY = PrivacyPolicy(
  max_epsilon=accounting.compute_epsilon(
    sampling_rate=0.05, noise_multiplier=1.1, steps=60, delta=1e-5, accountant="rdp"
  ),
  delta=1e-5,
  accountant="rdp",
)


@pytest.fixture(autouse=True)
def _no_key_configured(monkeypatch):
  monkeypatch.delenv(signing.KEY_ENV, raising=False)
  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)


def _reserving(history, run_id, reserved=40, taken=0):
  """A run that reserved `reserved` steps and has taken `taken` of them so far."""
  run = PrivacyLedger.open_history(history, 4000, "sha256:data", run_id=run_id)
  run.start_segment(PLAN, steps=reserved)
  for _ in range(taken):
    run.record_step()
  return run


def _pre_check(history, run_id, steps=40):
  """The pre-check of a new run about to train `steps` steps (as DPModel.fit's first one)."""
  run = PrivacyLedger.open_history(history, 4000, "sha256:data", run_id=run_id)
  return refuse_unless_blessable(POLICY, run.if_trained(PLAN, steps))


def test_a_reservation_refuses_other_pre_checks_until_its_run_finishes(tmp_path):
  a = _reserving(tmp_path, "run-a", reserved=40, taken=5)
  assert a.with_reservations().noisy_steps == 40  # its own reservation counts too
  with pytest.raises(PolicyRefusal, match="exceeds the policy's max_epsilon") as refusal:
    _pre_check(tmp_path, "run-b")
  assert (
    f"this run (40 noisy steps, after the 5 already recorded in the ledger history "
    f"{tmp_path}, and the 35 reserved by run(s) run-a still training (another run "
    "reserved steps of the budget: retry when it finishes; run run-a: last written "
  ) in str(refusal.value)
  # Until when: the storage's modification time of run-a's segment plus the stale window.
  (path,) = tmp_path.glob("segment-*.json")
  until = re.search(
    r"its reservation lapses at (\S+) unless it writes again \(5 min after its "
    r"last write\); if that run was killed: dp-tfx release-reservation "
    f"{re.escape(str(tmp_path))} --segment {path.stem} --force\\)\\)",
    str(refusal.value),
  ).group(1)
  lapses = datetime.datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
  assert abs(lapses - (path.stat().st_mtime + RESERVATION_STALE_SECONDS)) <= 2
  # Epsilon counts what ran only: the reservation gates pre-checks, nothing else.
  assert PrivacyLedger.open_history(tmp_path, 4000, "sha256:data").noisy_steps == 5
  for _ in range(5):
    a.record_step()
  a.finish_segment()  # 10 of the 40 steps it reserved
  (segment,) = read_history(tmp_path)
  assert (segment.noisy_steps, segment.reserved_steps) == (10, 40) and segment.finished_at
  assert _pre_check(tmp_path, "run-b").epsilon <= POLICY.max_epsilon  # 10 + 40 steps


def test_runs_that_reserve_at_once_may_refuse_each_other_and_leave_no_reservation(tmp_path):
  a, b = _reserving(tmp_path, "run-a"), _reserving(tmp_path, "run-b")
  for run, other in ((a, "run-b"), (b, "run-a")):  # both check before either one ends
    run.refresh()
    with pytest.raises(PolicyRefusal, match=f"40 reserved by run\\(s\\) {other} still training"):
      refuse_unless_blessable(POLICY, run.with_reservations())
  for run in (a, b):
    run.finish_segment()  # as DPModel.fit does when its pre-check refuses it
  segments = read_history(tmp_path)
  assert [(s.noisy_steps, s.reserved_steps) for s in segments] == [(0, 40), (0, 40)]
  assert all(s.finished_at for s in segments)
  assert _pre_check(tmp_path, "run-c").epsilon <= POLICY.max_epsilon  # blocked by neither


def _last_written(history, seconds_ago):
  """Sets the storage's modification time of every segment file to `seconds_ago`."""
  moment = time.time() - seconds_ago
  for path in pathlib.Path(history).glob("segment-*.json"):
    os.utime(path, (moment, moment))


def _stamped(run, seconds_ago):
  """Rewrites the run's segment with an `updated_at` from a clock `seconds_ago` behind."""
  stamp = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
  run.current_segment.updated_at = stamp.isoformat()
  run.flush()


def test_a_killed_run_blocks_for_minutes_not_an_hour():
  # A running fit rewrites its segment every HEARTBEAT_SECONDS: a few minutes without a write
  # is a killed run, and a killed run must not lock the budget for an hour.
  assert HEARTBEAT_SECONDS * 5 <= RESERVATION_STALE_SECONDS <= 600


@pytest.mark.parametrize(
  "age, counted",
  [(RESERVATION_STALE_SECONDS - 60, 40), (RESERVATION_STALE_SECONDS + 60, 5)],
  ids=["still-training", "killed"],
)
def test_an_unfinished_reservation_lapses_once_its_segment_file_is_stale(tmp_path, age, counted):
  # A run killed mid-fit never finishes its segment; every step it took was recorded first.
  _reserving(tmp_path, "killed", reserved=40, taken=5)
  _last_written(tmp_path, age)
  assert (
    PrivacyLedger.open_history(tmp_path, 4000, "sha256:x").with_reservations().noisy_steps
    == counted
  )


@pytest.mark.parametrize("skew", [-7200, 7200], ids=["writer-2h-behind", "writer-2h-ahead"])
def test_staleness_is_the_storages_modification_time_not_the_writers_clock(tmp_path, skew):
  # A host whose clock is 2 h behind stamps updated_at 2 h in the past: its live reservation
  # must not look stale at once; one 2 h ahead must not hold a killed run's reservation for 2 h.
  run = _reserving(tmp_path, "skewed", reserved=40, taken=5)
  _stamped(run, -skew)  # just written, on the storage's clock
  pre_check = lambda: PrivacyLedger.open_history(tmp_path, 4000, "sha256:x").with_reservations()
  assert pre_check().noisy_steps == 40
  _last_written(tmp_path, RESERVATION_STALE_SECONDS + 60)  # then killed, minutes ago
  assert pre_check().noisy_steps == 5


def test_a_reservation_counts_where_the_storage_gives_no_modification_time(tmp_path, monkeypatch):
  _reserving(tmp_path, "killed", reserved=40, taken=5)
  _last_written(tmp_path, 10 * RESERVATION_STALE_SECONDS)
  monkeypatch.setattr(files, "modified_time", lambda path: None)  # as on ram://
  planned = PrivacyLedger.open_history(tmp_path, 4000, "sha256:x").if_trained(PLAN, 40)
  assert planned.noisy_steps == 80  # fail closed: the reservation holds
  with pytest.raises(
    PolicyRefusal,
    match="the storage gives no modification time, so its "
    "reservation holds until it finishes; if that run was killed: dp-tfx "
    "release-reservation ",
  ):
    refuse_unless_blessable(POLICY, planned)


def _release(capsys, place, segment_id, *flags):
  """`dp-tfx release-reservation PLACE --segment SEGMENT_ID FLAGS --json`: (status, output)."""
  from dp_tfx.pipelines import cli

  status = cli.main(["release-reservation", str(place), "--segment", segment_id, *flags, "--json"])
  captured = capsys.readouterr()
  return status, json.loads(captured.out) if status == 0 else captured.err


@pytest.mark.parametrize(
  "ahead, suspect",
  [(None, "not after 1970"), (3600, r"\d+ s in the future")],
  ids=["zero", "future"],
)
def test_a_suspect_modification_time_is_named_and_the_reservation_can_be_released(
  tmp_path, capsys, ahead, suspect
):
  # Read as "unknown", a time of 0 held a killed run's reservation for ever; one an hour ahead
  # was accepted as fresh. It still holds (it cannot be judged), but the refusal says why and
  # how to end it, and releasing it is safe: epsilon counts the 5 recorded steps either way.
  _reserving(tmp_path, "killed", reserved=40, taken=5)
  (path,) = tmp_path.glob("segment-*.json")
  moment = 0 if ahead is None else time.time() + ahead
  os.utime(path, (moment, moment))
  with pytest.raises(
    PolicyRefusal,
    match=(
      f"run killed: its segment file's modification time is suspect \\({suspect}\\), so its "
      "reservation holds until it finishes; if that run was killed: dp-tfx release-reservation "
      f"{re.escape(str(tmp_path))} --segment {path.stem} --force"
    ),
  ):
    _pre_check(tmp_path, "next")
  status, error = _release(capsys, tmp_path, path.stem)
  assert status == 2 and "may belong to a run still training" in error and "--force" in error
  status, released = _release(capsys, tmp_path, path.stem, "--force")
  assert status == 0 and released["run_id"] == "killed" and released["released"] == path.stem
  assert (released["recorded_steps"], released["reserved_steps"]) == (5, 40)
  (segment,) = read_history(tmp_path)
  assert (segment.noisy_steps, segment.finished_at) == (5, released["finished_at"])
  assert _pre_check(tmp_path, "next").epsilon <= POLICY.max_epsilon  # 5 + 40 steps
  status, error = _release(capsys, tmp_path, path.stem, "--force")
  assert status == 2 and "holds no reservation: it finished at" in error


def test_release_reservation_refuses_a_live_run_and_a_missing_segment(tmp_path, capsys):
  run = _reserving(tmp_path, "alive", reserved=40, taken=5)
  (path,) = tmp_path.glob("segment-*.json")
  written = path.read_bytes()
  status, error = _release(capsys, tmp_path, path.stem)
  assert status == 2 and len(error.strip().splitlines()) == 1
  assert re.search(r"this one was last written \d+ s ago\), so nothing was written", error)
  assert path.read_bytes() == written
  status, error = _release(capsys, tmp_path, "segment-nonexistent")
  assert status == 2 and "holds no segment segment-nonexistent" in error
  _last_written(tmp_path, RESERVATION_STALE_SECONDS + 60)  # killed minutes ago: no --force
  assert _release(capsys, tmp_path, path.stem)[0] == 0
  assert read_history(tmp_path)[0].finished_at
  run.record_step()  # not dead after all: its next write takes its reservation back
  (segment,) = read_history(tmp_path)
  assert (segment.noisy_steps, segment.finished_at) == (6, None)


def test_a_ledger_file_of_a_killed_run_can_be_released(tmp_path, capsys, monkeypatch):
  path = tmp_path / "ledger.json"
  killed = PrivacyLedger.open_for(path, 4000, "sha256:data")
  killed.start_segment(PLAN, steps=40)
  killed.record_step()
  segment_id = killed.current_segment.segment_id
  del killed
  monkeypatch.setattr(files, "modified_time", lambda path: None)  # as on ram://
  with pytest.raises(
    ledger_module.LedgerError,
    match=(
      f"if that run was killed: dp-tfx release-reservation {re.escape(str(path))} --segment "
      f"{segment_id} --force"
    ),
  ):
    PrivacyLedger.open_for(path, 4000, "sha256:data")
  status, released = _release(capsys, path, segment_id, "--force")
  assert status == 0 and (released["recorded_steps"], released["reserved_steps"]) == (1, 40)
  assert PrivacyLedger.open_for(path, 4000, "sha256:data").noisy_steps == 1


def test_a_released_signed_segment_stays_signed_and_needs_the_key(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv(signing.KEY_ENV, "k" * 32)
  _reserving(tmp_path, "killed", taken=2)
  (path,) = tmp_path.glob("segment-*.json")
  monkeypatch.delenv(signing.KEY_ENV)
  status, error = _release(capsys, tmp_path, path.stem, "--force")
  assert status == 2 and "no ledger key is set (DP_TFX_LEDGER_KEY or" in error
  assert "signature" in json.loads(path.read_text())  # nothing was written
  monkeypatch.setenv(signing.KEY_ENV, "k" * 32)
  assert _release(capsys, tmp_path, path.stem, "--force")[0] == 0
  (segment,) = LedgerHistory(tmp_path, b"k" * 32).read()
  assert segment.finished_at and segment.noisy_steps == 2


def test_the_pre_check_reads_the_storages_clock_not_this_hosts(tmp_path, monkeypatch):
  # After its own reservation is written, a run judges other runs' segments by the storage's
  # modification times alone: a checking host whose clock runs 2 h ahead still counts them.
  _reserving(tmp_path, "other", reserved=40, taken=5)
  checking = _reserving(tmp_path, "checking", reserved=10)
  real_time = time.time
  monkeypatch.setattr(time, "time", lambda: real_time() + 7200)
  assert checking.with_reservations().noisy_steps == 50


def _segment_file(history, run_id):
  (path,) = [
    path
    for path in pathlib.Path(history).glob("segment-*.json")
    if json.loads(path.read_text())["body"]["segment"]["run_id"] == run_id
  ]
  return path


def test_a_heartbeat_keeps_a_reservation_alive_and_stops_when_told(tmp_path):
  run = _reserving(tmp_path, "alive", reserved=40, taken=5)
  _last_written(tmp_path, RESERVATION_STALE_SECONDS + 60)  # as if no step for minutes
  stamp = run.current_segment.updated_at
  heartbeat = run.start_heartbeat(interval=0.02)
  try:
    deadline = time.time() + 10
    while read_history(tmp_path)[0].updated_at == stamp:
      assert time.time() < deadline
      time.sleep(0.01)
  finally:
    heartbeat.stop()
  assert not any(thread.name == "dp_tfx-ledger-heartbeat" for thread in threading.enumerate())
  (segment,) = read_history(tmp_path)
  assert (segment.noisy_steps, segment.finished_at) == (5, None)  # only the time stamp changed
  assert (
    PrivacyLedger.open_history(tmp_path, 4000, "sha256:x").with_reservations().noisy_steps == 40
  )
  written = _segment_file(tmp_path, "alive").read_bytes()
  time.sleep(0.1)
  assert _segment_file(tmp_path, "alive").read_bytes() == written  # stopped: no more writes
  run.finish_segment()
  finished = _segment_file(tmp_path, "alive").read_bytes()
  heartbeat = run.start_heartbeat(interval=0.01)
  time.sleep(0.1)
  heartbeat.stop()
  assert _segment_file(tmp_path, "alive").read_bytes() == finished  # a finished one: no beats


def test_a_failed_heartbeat_is_logged_and_tried_again_at_the_next_beat(
  tmp_path, monkeypatch, caplog
):
  # A beat that failed once used to stop the thread: a long fit's reservation then went stale.
  run = _reserving(tmp_path, "flaky", reserved=40, taken=5)
  stamp = read_history(tmp_path)[0].updated_at
  write_bytes, failures = files.write_bytes, []

  def flaky(path, data):
    if len(failures) < 2:
      failures.append(path)
      raise OSError("the storage is unavailable for a moment")
    return write_bytes(path, data)

  monkeypatch.setattr(files, "write_bytes", flaky)
  heartbeat = run.start_heartbeat(interval=0.02)
  try:
    deadline = time.time() + 10
    while read_history(tmp_path)[0].updated_at == stamp:
      assert time.time() < deadline, "the heartbeat stopped at its first error"
      time.sleep(0.01)
  finally:
    heartbeat.stop()
  assert len(failures) == 2 and isinstance(heartbeat.error, OSError)
  assert "a ledger heartbeat failed" in caplog.text


def test_heartbeats_and_steps_never_overwrite_each_other(tmp_path):
  run = _reserving(tmp_path, "busy", reserved=100)
  heartbeat = run.start_heartbeat(interval=0.001)
  try:
    for step in range(1, 101):
      run.record_step()
      assert read_history(tmp_path)[0].noisy_steps == step  # no older beat written after it
  finally:
    heartbeat.stop()
  assert heartbeat.error is None


def test_records_older_than_reservations_load_and_reserve_nothing(tmp_path):
  run = _reserving(tmp_path, "old", taken=3)
  (path,) = tmp_path.glob("segment-*.json")
  document = json.loads(path.read_text())
  for name in ("reserved_steps", "finished_at"):
    del document["body"]["segment"][name]
  document["content_hash"] = _hash_body(document["body"])
  path.write_text(json.dumps(document))
  (old,) = read_history(tmp_path)
  assert (old.reserved_steps, old.finished_at, old.noisy_steps) == (None, None, 3)
  assert PrivacyLedger.open_history(tmp_path, 4000, "sha256:x").with_reservations().noisy_steps == 3
  # Its fixed facts (hashed into MLMD by the DPTrainer) are what they were before.
  assert set(old.fixed_facts()) == set(document["body"]["segment"]) - {"noisy_steps", "updated_at"}
  snapshot = run.body()  # a whole ledger of format 2 without the new fields loads too
  for name in ("reserved_steps", "finished_at"):
    del snapshot["segments"][0][name]
  (tmp_path / "snapshot.json").write_text(
    json.dumps({"body": snapshot, "content_hash": _hash_body(snapshot)})
  )
  assert PrivacyLedger.load(tmp_path / "snapshot.json").segments[0].reserved_steps is None


@pytest.mark.parametrize(
  "edit", [{"finished_at": None}, {"reserved_steps": 0}], ids=["unfinished", "reserved-nothing"]
)
def test_a_signed_reservation_verifies_and_an_edit_of_it_breaks_the_signature(
  tmp_path, monkeypatch, edit
):
  monkeypatch.setenv(signing.KEY_ENV, "k" * 32)
  run = _reserving(tmp_path, "signed", taken=2)
  run.finish_segment()
  (segment,) = LedgerHistory(tmp_path, b"k" * 32).read()
  assert segment.finished_at and segment.reserved_steps == 40
  (path,) = tmp_path.glob("segment-*.json")
  document = json.loads(path.read_text())
  document["body"]["segment"].update(edit)
  document["content_hash"] = _hash_body(document["body"])  # what anyone without the key can do
  path.write_text(json.dumps(document))
  with pytest.raises(LedgerIntegrityError, match="signature does not match"):
    LedgerHistory(tmp_path, b"k" * 32).read()


# -- DPModel.fit ----------------------------------------------------------------------------------

N = 40
# 15 steps of the DP models below: one run of 10 passes, 3 and 10 pass, two runs of 10 do not.
FIT_POLICY = PrivacyPolicy(
  max_epsilon=accounting.compute_epsilon(
    sampling_rate=8 / N, noise_multiplier=1.0, steps=15, delta=1e-5, accountant="rdp"
  ),
  delta=1e-5,
  accountant="rdp",
)


def _dp_model(history, run_id):
  config = dp_tfx.DPConfig(
    l2_norm_clip=0.3, noise_multiplier=1.0, batch_size=8, steps=10, delta=1e-5
  )
  dp_model = dp_tfx.make_private(
    models.dense_model(),
    config,
    ledger_history=history,
    run_id=run_id,
    policy=FIT_POLICY,
    accountant="rdp",
  )
  dp_model.compile(
    optimizer=keras.optimizers.SGD(0.1),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  return dp_model


def test_a_fit_started_while_another_trains_is_refused_until_that_one_ends(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  a, b = _dp_model(tmp_path, "run-a"), _dp_model(tmp_path, "run-b")
  refusals = []

  def b_starts():
    with pytest.raises(PolicyRefusal) as refusal:
      b.fit(x, y, verbose=0)
    refusals.append(str(refusal.value))

  a.fit(x, y, verbose=0, callbacks=[MeanwhileAndStop(b_starts)])
  (refusal,) = refusals
  assert "after the 3 already recorded" in refusal
  assert "and the 7 reserved by run(s) run-a still training" in refusal
  (segment,) = read_history(tmp_path)  # refused by its first check, run-b wrote nothing
  assert (segment.noisy_steps, segment.reserved_steps) == (3, 10) and segment.finished_at
  b.fit(x, y, verbose=0)  # run-a took 3 of the 10 steps it reserved: 13 fit the policy
  assert b.privacy_ledger.noisy_steps == 13
  assert b.privacy_ledger.epsilon(1e-5, "rdp") <= FIT_POLICY.max_epsilon
  assert all(s.finished_at for s in read_history(tmp_path))


def test_a_fit_refused_by_its_second_check_leaves_a_finished_segment_of_no_steps(
  tmp_path, monkeypatch
):
  x, y = models.batch_for("dense", N, seed=1)
  b = _dp_model(tmp_path, "run-b")
  a = PrivacyLedger.open_history(tmp_path, N, "sha256:a", run_id="run-a")
  prepare_batches = b._distributed_batches

  def a_reserves_meanwhile(*args):  # after run-b's first check, before its reservation
    a.start_segment(b.plan, steps=10)
    return prepare_batches(*args)

  monkeypatch.setattr(b, "_distributed_batches", a_reserves_meanwhile)
  with pytest.raises(PolicyRefusal, match="the 10 reserved by run\\(s\\) run-a still training"):
    b.fit(x, y, verbose=0)
  (refused,) = [s for s in read_history(tmp_path) if s.run_id == "run-b"]
  assert (refused.noisy_steps, refused.reserved_steps) == (0, 10) and refused.finished_at
  a.finish_segment()  # run-a ended without a step
  monkeypatch.undo()
  b.fit(x, y, verbose=0)  # the refused attempt blocks no one, its own run included
  assert b.privacy_ledger.noisy_steps == 10


class _SlowFirstStep(keras.callbacks.Callback):
  """Holds the first step for a while, and notes what the segment file said meanwhile."""

  def __init__(self, history):
    super().__init__()
    self._history, self.seen = history, []

  def on_train_batch_end(self, batch, logs=None):
    if not self.seen:
      before = read_history(self._history)[0].updated_at
      time.sleep(0.3)
      (segment,) = read_history(self._history)
      self.seen.append((segment.noisy_steps, segment.updated_at > before))


def test_a_fit_beats_while_it_trains_and_stops_when_it_ends(tmp_path, monkeypatch):
  monkeypatch.setattr(privacy_ledger, "HEARTBEAT_SECONDS", 0.02)  # read there
  x, y = models.batch_for("dense", N, seed=1)
  slow = _SlowFirstStep(tmp_path)
  _dp_model(tmp_path, "run-a").fit(x, y, verbose=0, callbacks=[slow])
  assert slow.seen == [(1, True)]  # rewritten while no step was recorded
  assert not any(thread.name == "dp_tfx-ledger-heartbeat" for thread in threading.enumerate())
  (segment,) = read_history(tmp_path)
  assert segment.noisy_steps == 10 and segment.finished_at


def _run_workers(ledger_place, work, names):
  """Starts a fit_worker per name (ledger history or file `ledger_place`), lets them fit at once
  and returns their results by name."""
  environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
  workers = {
    name: subprocess.Popen(
      [
        sys.executable,
        "-m",
        "tests.dp_tfx.fit_worker",
        str(ledger_place),
        str(work),
        name,
        repr(FIT_POLICY.max_epsilon),
      ],
      cwd=REPOSITORY,
      env=environment,
      stderr=subprocess.PIPE,
    )
    for name in names
  }
  deadline = time.time() + 240
  while not all((work / f"{name}.ready").exists() for name in workers):
    assert time.time() < deadline and all(p.poll() is None for p in workers.values()), [
      p.stderr.read() for p in workers.values() if p.poll() is not None
    ]
    time.sleep(0.05)
  (work / "go").write_text("")
  for process in workers.values():
    assert process.wait(timeout=240) == 0, process.stderr.read()
  return {name: json.loads((work / f"{name}.json").read_text()) for name in workers}


@pytest.mark.slow  # two Python processes that each import TensorFlow: ~20 s on 2 cores
def test_two_concurrent_fits_on_one_ledger_file_never_lose_a_step(tmp_path):
  # The review's case: two processes on one ledger_path both trained 10 steps under a policy
  # that allows 15; the file held 10 (the last writer's), the truth was 20. Now the second to
  # write finds the file changed (or in use) and fails closed before its first step.
  path, work = tmp_path / "ledger.json", tmp_path / "work"
  work.mkdir()
  results = _run_workers(path, work, ("run-a", "run-b"))
  trained = [name for name, result in results.items() if result["trained"]]
  assert len(trained) <= 1, results
  for name, result in results.items():
    if name not in trained:
      assert result["trained"] == 0 and "ledger_history" in result["error"], results
  ledger = PrivacyLedger.load(path)
  assert ledger.noisy_steps == sum(result["trained"] for result in results.values())
  assert all(s.finished_at for s in ledger.segments)
  assert ledger.epsilon(1e-5, "rdp") <= FIT_POLICY.max_epsilon


@pytest.mark.slow  # two Python processes that each import TensorFlow: ~20 s on 2 cores
def test_two_concurrent_fits_never_both_train_past_the_policy(tmp_path):
  # The case: each run alone is within the policy, both together are not. Without
  # reservations both passed the pre-check, trained, and were refused by the evaluator after.
  history, work = tmp_path / "history", tmp_path / "work"
  work.mkdir()
  results = _run_workers(history, work, ("run-a", "run-b"))
  trained = [name for name, result in results.items() if result["trained"]]
  assert len(trained) <= 1, results  # at most one trains; both may be refused (fail closed)
  for name, result in results.items():
    if name not in trained:
      assert result["trained"] == 0 and "refused before training" in result["refusal"]
  total = PrivacyLedger.open_history(history, N, "sha256:next")
  assert total.noisy_steps == 10 * len(trained)
  assert all(s.finished_at for s in total.segments)
