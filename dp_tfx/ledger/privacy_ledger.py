"""PrivacyLedger: a ledger as a training run records it, and where it keeps it.

It extends the facts of a ledger (facts.py) with recording (a segment started, reserved, counted
step by step, kept alive by a heartbeat, finished) and storage: a ledger history (history.py),
where each run writes only its own segment files, or one ledger file rewritten whole, which
takes one process at a time and fails closed when another wrote it meanwhile.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Optional

from dp_tfx import files
from dp_tfx.canonical import sha256_digest
from dp_tfx.ledger.envelope import _check_key_kept, _verified_body
from dp_tfx.ledger.errors import LedgerError
from dp_tfx.ledger.facts import EXAMPLE, LedgerFacts
from dp_tfx.ledger.heartbeat import Heartbeat
from dp_tfx.ledger.history import (
  LedgerHistory,
  _check_still_recorded,
  _segment_document,
  check_chain,
)
from dp_tfx.ledger.reservations import HEARTBEAT_SECONDS, _age, _reservation_note
from dp_tfx.ledger.segment import Segment, _new_segment_id, _now, _order, new_run_id

LEDGER_FILE_NAME = "privacy_ledger.json"


def _check_writable(path: str) -> None:
  if files.scheme(path) not in files.WHOLE_REPLACE_SCHEMES:
    # A crash between deleting the old file and renaming the new one would leave none, and the
    # next run would start counting from zero: refuse rather than risk under-counting.
    raise LedgerError(
      f"a ledger cannot be written on {files.scheme(path)}:// (no whole-file "
      "replace there); use a local path, gs:// or s3://"
    )


class PrivacyLedger(LedgerFacts):
  """What DP training did, serialised as JSON with a content hash.

  A ledger holds segments; its epsilon is the composition of all of them. It is kept in one of
  two ways while training:

  * in a ledger history (`open_history`): a directory shared by every run on the data source,
    where this run writes only its own segment files. Safe for any number of concurrent runs.
  * in one file (`open_for`, `save`): rewritten whole at every step. For a single process only:
    before every write, the file must still hold what this object last wrote or read there (or
    be absent before its first write), and `open_for` refuses a file whose run is still training
    (an unfinished reservation), so a second process fails closed (LedgerError) rather than
    overwrite the first one's steps.

  The trainer's output (`save` to the artifact) is a self-contained snapshot: every segment of the
  history when the run ended, and where the history is, so the PrivacyEvaluator can check the
  snapshot against it and judge the total as it is then (`with_history`).

  Args: those of LedgerFacts, the facts of the ledger.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.path: Optional[str] = None
    self._history: Optional[LedgerHistory] = None  # set when this run writes into the history
    self._own: list = []  # the segments this object started (only these are ever written)
    # In a pre-check's copy (with_reservations, if_trained): the steps counted in noisy_steps
    # that no run has taken yet, by run id, and for each run how its reservations end (one
    # _reservation_note per segment). Empty in a ledger of what ran.
    self.reserved: collections.Counter = collections.Counter()
    self.reserved_notes: dict = {}
    # Every write (a step, a heartbeat, the end of a segment) holds it: see start_heartbeat.
    self._lock = threading.RLock()
    # SHA-256 of what this object last wrote to (or read from) `path`; None: nothing yet, and
    # the file must be absent before the first write (see _check_unchanged).
    self._written: Optional[str] = None
    # When the storage last modified the file each segment was read from (by segment id).
    self._modified: dict = {}
    # Whether the file `load` read carried a signature (see _check_key_kept).
    self.signed = False
    # This object's last write: (file, time.monotonic() after it), to read the storage's clock.
    self._last_write: Optional[tuple] = None

  # -- recording ---------------------------------------------------------------------------------

  def start_segment(self, plan, seeded: bool = False, steps: Optional[int] = None) -> Segment:
    """Opens a segment for a training run that follows `plan` (a TrainingPlan) on this data.

    `seeded` records that sampling and noise came from a fixed seed (reproducible for tests; not
    private if the seed is known), so a policy can refuse such runs. `steps`: the noisy steps
    this fit reserves (default: the whole plan); other runs' pre-checks count them as spent
    until `finish_segment`.
    """
    segment = self._segment_for(plan, seeded)
    segment.reserved_steps = plan.steps if steps is None else steps
    with self._lock:
      if self._history is not None:
        segment.predecessors = [
          {"segment_id": seen.segment_id, "noisy_steps": seen.noisy_steps} for seen in self.segments
        ]
        # A fresh name: never another run's file. Written before any step runs.
        path = self._history.segment_path(segment.segment_id)
        files.create_new(path, _segment_document(segment, self.privacy_unit).encode("utf-8"))
        self._last_write = (path, time.monotonic())
      self.segments.append(segment)
      self._own.append(segment)
      try:
        self._flush_whole()
      except LedgerError:  # the file is another process's now: this segment never started
        self.segments.remove(segment)
        self._own.remove(segment)
        raise
    return segment

  def _segment_for(self, plan, seeded: bool) -> Segment:
    if plan.dataset_size != self.dataset_size:
      raise LedgerError(
        f"this ledger records a run on {self.dataset_size} examples, the plan "
        f"{plan.dataset_size}: open the ledger for the run's data"
      )
    return Segment(
      sampling=plan.sampling,
      sampling_rate=plan.sampling_rate,
      batch_size=plan.batch_size,
      noise_multiplier=plan.noise_multiplier,
      l2_norm_clip=plan.l2_norm_clip,
      num_microbatches=plan.num_microbatches,
      physical_batch_size=plan.physical_batch_size,
      planned_steps=plan.steps,
      seeded=bool(seeded),
      dataset_size=self.dataset_size,
      dataset_fingerprint=self.dataset_fingerprint,
      data_source=self.data_source,
      run_id=self.run_id,
      segment_id=_new_segment_id(),
    )

  def if_trained(self, plan, steps: int, seeded: bool = False) -> "PrivacyLedger":
    """A copy of `with_reservations()` after `steps` more noisy steps of `plan`, never written
    anywhere: the total a run would reach, so that a run that could never be blessed is refused
    before it spends (or reserves) anything."""
    planned = self.with_reservations()
    segment = self._segment_for(plan, seeded)
    segment.noisy_steps = steps
    planned.segments.append(segment)
    planned.reserved[self.run_id] += steps
    planned.validate()
    return planned

  def with_reservations(self) -> "PrivacyLedger":
    """A copy of this ledger, never written anywhere, where each segment counts the steps a
    policy pre-check counts (Segment.pre_check_steps): those of every unfinished reservation,
    this run's own included.

    Every run writes its reservation before its pre-check reads the history, so of two runs
    that check at once the later one counts the earlier's: they cannot both pass on the same
    budget. Both may be refused (each counts the other's reservation); that fails closed, and
    either may retry once the other finished.
    """
    ages = self._ages()
    counted = PrivacyLedger._from_body(self.body())
    for segment in counted.segments:
      age, why = ages[segment.segment_id]
      steps = segment.pre_check_steps(age)
      if steps > segment.noisy_steps:
        counted.reserved[segment.run_id] += steps - segment.noisy_steps
        segment.noisy_steps = steps
        counted.reserved_notes.setdefault(segment.run_id, []).append(
          _reservation_note(segment, age, why, self.history_dir or self.path)
        )
    return counted

  def _ages(self) -> dict:
    """(age, why) of each segment's file (by segment id; see `_age`): seconds since the storage
    last modified it, on the storage's clock as far as this process can read it; this object's
    own segments are 0 (it is running them)."""
    now = self._storage_now()
    own = {segment.segment_id for segment in self._own}
    return {
      segment.segment_id: (0.0, None)
      if segment.segment_id in own
      else _age(self._modified.get(segment.segment_id), now)
      for segment in self.segments
    }

  def _storage_now(self) -> float:
    """Now on the storage's clock, as near as this process can tell: the modification time of
    its own last write plus the time since (a monotonic clock), so that neither this host's
    clock nor a writer's is trusted; this host's clock before it wrote anything."""
    with self._lock:
      if self._last_write is not None:
        path, written = self._last_write
        try:
          modified = files.modified_time(path)
        except OSError:
          modified = None
        if modified is not None:
          return modified + (time.monotonic() - written)
    return time.time()

  @property
  def current_segment(self) -> Optional[Segment]:
    """The segment this object started last (the one `record_step` counts in)."""
    return self._own[-1] if self._own else None

  def _started_segment(self, action: str) -> Segment:
    if self.current_segment is None:
      raise LedgerError(f"{action} before start_segment")
    return self.current_segment

  def record_step(self) -> None:
    """Counts one noisy step of the current segment as spent, and writes it out at once."""
    with self._lock:
      segment = self._started_segment("record_step")
      segment.noisy_steps += 1
      segment.updated_at = _now()
      self.flush()

  def finish_segment(self) -> None:
    """Marks the current segment finished (its fit ended: trained, refused or raised) and writes
    it out: from now on pre-checks count only the steps it took."""
    with self._lock:
      self._started_segment("finish_segment").finished_at = _now()
      self.flush()

  def heartbeat(self) -> None:
    """Rewrites the current segment, if it is unfinished, with a fresh `updated_at`: its run is
    alive, so its reservation holds (see Segment.reserving). A no-op otherwise."""
    with self._lock:
      segment = self.current_segment
      if segment is None or segment.finished_at is not None:
        return
      segment.updated_at = _now()
      self.flush()

  def start_heartbeat(self, interval: Optional[float] = None) -> "Heartbeat":
    """Starts a daemon thread that calls `heartbeat` every `interval` seconds (default
    HEARTBEAT_SECONDS) until its `stop`: a fit holds it from its reservation to its end."""
    return Heartbeat(self, HEARTBEAT_SECONDS if interval is None else interval)

  def set_model_digest(self, digest: str) -> None:
    with self._lock:
      self.model_digest = digest
      self._flush_whole()

  def refresh(self) -> None:
    """Re-reads the ledger history: every other run's segments as they are now (runs that
    started or went on since this one opened it), beside this object's own.

    Raises:
      LedgerError: if a segment seen before is gone, changed or shortened there (a deleted
        record must never drop out of the total).
    """
    if self._history is None:
      return
    current = {segment.segment_id: segment for segment in self._history.read(self.privacy_unit)}
    _check_still_recorded(self.segments, current, self.history_dir)
    self._modified = dict(self._history.modified)
    own = {segment.segment_id for segment in self._own}
    others = [s for s in current.values() if s.segment_id not in own]
    self.segments = sorted(others + self._own, key=_order)

  # -- the history as the evaluator judges it ------------------------------------------------------

  def with_history(self, key: Optional[bytes] = None) -> "PrivacyLedger":
    """This snapshot checked against its ledger history, with every segment there now.

    The trainer's snapshot counts what the history held when its run ended; other runs on the
    data source may have recorded steps since (or be recording them). The total to judge is the
    composition of every segment in the history now. Each segment of the snapshot must still be
    there, with the same facts and at least as many steps: a history that lost, shortened or
    changed a segment is refused.

    Returns:
      A ledger with this one's facts (model digest, this run's data) and the history's segments;
      this ledger itself when it names no history.

    Args:
      key: if given, every segment in the history must be signed with it.

    Raises:
      LedgerError: if the history is missing or malformed, or contradicts the snapshot.
    """
    if self.history_dir is None:
      return self
    history = LedgerHistory(self.history_dir, key)
    if not files.is_dir(self.history_dir):
      raise LedgerError(
        f"the ledger history {self.history_dir} that this ledger was recorded "
        "in is missing: the total spent on the data source cannot be checked"
      )
    current = {segment.segment_id: segment for segment in history.read(self.privacy_unit)}
    _check_still_recorded(self.segments, current, self.history_dir)
    total = PrivacyLedger._from_body(self.body())
    total.segments = sorted(current.values(), key=_order)
    total.validate()
    return total

  # -- storage -----------------------------------------------------------------------------------

  def save(self, path: os.PathLike | str) -> str:
    """Writes the ledger to `path` (local or a URL such as gs://) atomically and keeps it there:
    later steps flush to it.

    Raises:
      LedgerError: if a file is at `path` that this object did not read or write there (another
        ledger, or another process's: it is never overwritten).
    """
    with self._lock:
      path = files.normalised(path)  # "ledger.json" and "./ledger.json" are one file
      if path != self.path:
        self.path, self._written = path, None
      self._flush_whole()
    return self.path

  def flush(self) -> None:
    """Writes this object's current segment to the history (if it writes into one) and the whole
    ledger to `path` (if it has one)."""
    with self._lock:
      segment = self.current_segment
      if self._history is not None and segment is not None:
        path = self._history.segment_path(segment.segment_id)
        files.write_text(path, _segment_document(segment, self.privacy_unit))  # never half-written
        self._last_write = (path, time.monotonic())
      self._flush_whole()

  def _flush_whole(self) -> None:
    if self.path is None:
      return
    _check_writable(self.path)
    with self._lock:
      self._check_unchanged()
      data = self.to_json().encode("utf-8")
      files.write_bytes(self.path, data)  # never half-written, even on a crash
      self._written = sha256_digest(data)
      if self._history is None:  # a one-file ledger: its file is where the storage's clock is read
        self._last_write = (self.path, time.monotonic())

  def _check_unchanged(self) -> None:
    """Raises LedgerError unless the file at `path` holds what this object last wrote or read
    there (or, before its first write, that no file is there): a one-file ledger written by two
    processes at once would lose one's steps; the second to write fails closed instead."""
    try:
      current = sha256_digest(files.read_bytes(self.path))
    except FileNotFoundError:
      current = None
    if current == self._written:
      return
    if self._written is None:
      what = (
        "is there already, and this run did not read it (another ledger, or one another "
        "process started meanwhile)"
      )
    elif current is None:
      what = "was deleted since this run wrote it"
    else:
      what = (
        "was rewritten since this run last read or wrote it: another process is "
        "continuing it at the same time (or it was edited)"
      )
    raise LedgerError(
      f"the ledger file {self.path} {what}. Writing it now could lose recorded steps, so "
      "nothing was written. A ledger file takes one run at a time; for runs that may overlap, "
      "use a ledger history (make_private(..., ledger_history=DIR), the DPTrainer's "
      "ledger_history_dir), where each run writes only its own segment files"
    )

  @classmethod
  def load(cls, path: os.PathLike | str, key: Optional[bytes] = None) -> "PrivacyLedger":
    """The ledger at `path`, verified (and, with `key`, its signature checked)."""
    path = os.fspath(path)
    if not files.exists(path) or files.is_dir(path):
      raise LedgerError(f"no privacy ledger at {path}")
    data = files.read_bytes(path)
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as error:
      raise LedgerError(f"the ledger at {path} is not UTF-8 text: {error}") from None
    body, signed = _verified_body(text, key)
    ledger = cls._from_body(body)
    try:  # after reading: a write in between makes it look younger, never staler
      modified = files.modified_time(path)
    except OSError:  # gone since: its reservations count (fail closed)
      modified = None
    ledger.path, ledger.signed = files.normalised(path), signed
    ledger._written = sha256_digest(data)
    ledger._modified = {segment.segment_id: modified for segment in ledger.segments}
    return ledger

  @classmethod
  def open_for(
    cls,
    path: Optional[os.PathLike | str],
    dataset_size: int,
    fingerprint: str,
    privacy_unit: str = EXAMPLE,
    data_source: Optional[str] = None,
    read_only: bool = False,
    run_id: Optional[str] = None,
  ) -> "PrivacyLedger":
    """Continues the one-file ledger at `path` or starts a new one there (one process at a time;
    see `open_history` for runs that may overlap), for the run `run_id` (default: a new id).

    Runs on other data continue it too: every segment keeps its own N, and all compose.
    `read_only`: what a training worker other than the chief reads (the chief writes): a new
    ledger is not written to `path`.

    Raises:
      LedgerError: if the existing ledger counts another privacy unit, holds signed records and
        no ledger key is set (see _check_key_kept), or another run is still training on it (its
        segment holds a reservation: see Segment.reserving).
    """
    if path is not None and files.exists(path):
      ledger = cls.load(path)
      if ledger.privacy_unit != privacy_unit:
        raise LedgerError(
          f"the ledger at {path} counts {ledger.privacy_unit}s, this run "
          f"{privacy_unit}s; use a new ledger path"
        )
      _check_key_kept(ledger.signed, f"the ledger at {path}")
      ages = ledger._ages()
      for segment in ledger.segments:
        age, why = ages[segment.segment_id]
        if segment.reserving(age):
          raise LedgerError(
            f"the ledger file {path} is in use: run {segment.run_id} reserved "
            f"{segment.reserved_steps} noisy steps and is still training ("
            f"{_reservation_note(segment, age, why, ledger.path)}). A ledger file takes one "
            "run at a time; for runs that may overlap, use a ledger history "
            "(make_private(..., ledger_history=DIR))"
          )
      ledger.dataset_size, ledger.dataset_fingerprint = dataset_size, fingerprint
      ledger.data_source, ledger.run_id = data_source, run_id or new_run_id()
      return ledger
    ledger = cls(
      dataset_size=dataset_size,
      dataset_fingerprint=fingerprint,
      privacy_unit=privacy_unit,
      data_source=data_source,
      run_id=run_id,
    )
    if path is not None and not read_only:
      _check_writable(os.fspath(path))
      ledger.save(path)
    return ledger

  @classmethod
  def open_history(
    cls,
    directory: os.PathLike | str,
    dataset_size: int,
    fingerprint: str,
    privacy_unit: str = EXAMPLE,
    data_source: Optional[str] = None,
    run_id: Optional[str] = None,
    key: Optional[bytes] = None,
  ) -> "PrivacyLedger":
    """A ledger for a new run recorded in the ledger history at `directory`.

    It starts with every segment the history holds (every earlier or concurrent run on the data
    source, whatever data each had), and writes only this run's own segment files there.

    Raises:
      LedgerError: if the history is malformed or edited, counts another privacy unit, lies on
        a filesystem without whole-file replace, or holds signed records and no ledger key is
        set (see _check_key_kept).
    """
    directory = os.fspath(directory)
    _check_writable(directory)
    history = LedgerHistory(directory, key)  # with `key`, every record there must be signed
    segments = history.read(privacy_unit)
    check_chain(segments, directory)
    _check_key_kept(history.signed, f"the ledger history {directory}")
    ledger = cls(
      dataset_size=dataset_size,
      dataset_fingerprint=fingerprint,
      privacy_unit=privacy_unit,
      segments=segments,
      data_source=data_source,
      run_id=run_id,
      history_dir=directory,
    )
    ledger._history = history
    ledger._modified = dict(history.modified)
    return ledger
