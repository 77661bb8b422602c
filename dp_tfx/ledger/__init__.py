"""The privacy ledger: the facts of what DP training actually did, kept tamper-evident.

Privacy is accounted from this record only (never from a declared epsilon). Each call of `fit` is
a *segment* (the data's size N, sampling, q, sigma, C, microbatches, noisy steps executed); every
segment is its own Poisson-sampled Gaussian event, and all segments recorded for a data source
compose, whatever data each one had, so rerunning, restarting or changing the data adds to what
was already spent. The trainer counts a step before executing it and writes it out at once, so a
run killed mid-epoch leaves a record of every step it took (at worst one more).

Before its policy pre-check, a `fit` also *reserves* the steps it is about to run (its segment's
`reserved_steps`, written before any step) and marks its segment finished when it ends. A pre-check
counts every unfinished reservation as spent (`PrivacyLedger.with_reservations`), so concurrent
runs cannot all pass it on the same budget. Epsilon itself only ever counts steps that ran. While
a fit runs, its segment is rewritten every HEARTBEAT_SECONDS (`start_heartbeat`); a reservation
whose file the storage last modified over RESERVATION_STALE_SECONDS ago is a killed run's, and
lapses (judged by the storage's modification time, never by a writer's clock). Where that time is
missing or suspect a reservation holds until its run finishes; `release_reservation` (`dp-tfx
release-reservation`) finishes a killed run's segment by hand.

Runs record into a *ledger history* (`LedgerHistory`): a directory where each segment is a file of
its own, written only by the run that created it, so concurrent runs never lose each other's
steps. The ledger a run outputs is a self-contained snapshot of the history when it ended, and
names the history, where the PrivacyEvaluator judges the total as it is at evaluation time.

The content hash (SHA-256 of the canonical JSON body, per file) makes accidental or naive edits
evident; it is not a signature against someone who recomputes it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from typing import Any, Optional, Sequence

import dp_accounting
import numpy as np

from dp_tfx import accounting, files, signing
from dp_tfx.checks import unknown_fields
from dp_tfx.config import POISSON, SAMPLING_METHODS
from dp_tfx.version import __version__

FORMAT_VERSION = 2  # format 1 (one dataset per ledger, no segment files) is still read
LEDGER_FILE_NAME = "privacy_ledger.json"
SEGMENT_PREFIX = "segment-"
SEGMENT_KIND = "segment"
# The temporary name files.write_bytes gives a record while writing it: ".NAME-<32 hex digits>".
_WRITE_IN_FLIGHT = re.compile(r"\.(.+\.json)-[0-9a-f]{32}")
_STALE_TEMPORARY_SECONDS = 300
# A running fit rewrites its segment this often (PrivacyLedger.start_heartbeat), whatever its
# steps take: a first compilation, a long epoch end or a slow step does not make it look killed.
HEARTBEAT_SECONDS = 30
# An unfinished segment whose file the storage last modified this long ago is a killed run's: its
# reservation lapses (see Segment.pre_check_steps). Ten heartbeats.
RESERVATION_STALE_SECONDS = 300
# A modification time further than this ahead of now (on the storage's clock as far as this
# process can read it) is not one the storage gave a write: judged, it would hold a reservation
# for as long as it is ahead.
MODIFIED_TIME_SLACK_SECONDS = 60
EXAMPLE = "example"
SEQUENCE = "sequence"  # the privacy unit of language models trained on text cut into sequences


_LOG = logging.getLogger(__name__)


class LedgerError(ValueError):
  """The ledger is missing, malformed or describes something impossible or inconsistent."""


class LedgerIntegrityError(LedgerError):
  """The ledger's content does not match its hash: it was edited after it was written."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def dataset_fingerprint(*arrays: Any) -> str:
  """SHA-256 over the shapes, dtypes and bytes of the training arrays (nested dicts allowed)."""
  digest = hashlib.sha256()

  def feed(value):
    if isinstance(value, dict):
      for key in sorted(value):
        digest.update(str(key).encode())
        feed(value[key])
      return
    array = np.ascontiguousarray(np.asarray(value))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())

  for array in arrays:
    feed(array)
  return "sha256:" + digest.hexdigest()


def directory_digest(directory: os.PathLike | str) -> str:
  """SHA-256 over the relative paths and bytes of every file under `directory` (an exported model).

  The ledger records it, so a ledger paired with any other model is a detectable mismatch.
  """
  root = os.fspath(directory)
  if not files.is_dir(root):
    raise LedgerError(f"no model directory at {root}")
  digest = hashlib.sha256()
  for relative in files.files_under(root):
    digest.update(relative.encode() + b"\0")
    digest.update(files.read_bytes(os.path.join(root, relative)))
  return "sha256:" + digest.hexdigest()


@dataclasses.dataclass
class Segment:
  """One training run's `fit` on the data: the facts the accountant needs, and the steps that ran.

  Each segment is its own Poisson-sampled Gaussian event (its own q = batch_size / dataset_size,
  sigma and steps); all segments of a history compose, whatever data each one trained on.
  """

  sampling: str
  sampling_rate: float
  batch_size: int
  noise_multiplier: float
  l2_norm_clip: float
  num_microbatches: Optional[int]
  physical_batch_size: int
  planned_steps: int
  noisy_steps: int = 0
  seeded: bool = False
  started_at: str = dataclasses.field(default_factory=_now)
  updated_at: str = dataclasses.field(default_factory=_now)
  # Since format 2: what this segment trained on and who wrote it. In a format-1 ledger these are
  # filled in from the ledger (its one dataset) when it is read.
  dataset_size: Optional[int] = None
  dataset_fingerprint: Optional[str] = None
  data_source: Optional[str] = None
  run_id: Optional[str] = None
  segment_id: Optional[str] = None
  # Since reservations (absent from older records): the noisy steps its fit was about to run,
  # written before the policy pre-check, and when that fit ended (trained, refused or raised).
  reserved_steps: Optional[int] = None
  finished_at: Optional[str] = None
  # Since the chain (absent from older records): [{"segment_id", "noisy_steps"}] of every
  # segment of the history this one saw when it started, inside its hash and signature, so that
  # a segment deleted or shortened after a later run opened the history is found.
  predecessors: Optional[list] = None

  def dp_event(self, steps: Optional[int] = None) -> dp_accounting.DpEvent:
    """The event of this segment's first `steps` noisy steps (default: all that ran)."""
    return accounting.dp_sgd_event(
      self.sampling_rate,
      self.noise_multiplier,
      self.noisy_steps if steps is None else steps,
      self.num_microbatches,
    )

  def fixed_facts(self) -> dict:
    """Every fact but the step count and the time stamps: what may never change once written."""
    facts = dataclasses.asdict(self)
    del facts["noisy_steps"], facts["updated_at"], facts["finished_at"]
    for name in ("reserved_steps", "predecessors"):
      if facts[name] is None:  # a record older than these fields keeps its MLMD hash
        del facts[name]
    return facts

  def reserving(self, age_seconds: Optional[float]) -> bool:
    """Whether this segment holds a reservation: its fit has not finished and, by `age_seconds`
    (since the storage last modified its file; None when unknown or suspect, see `_age`), was
    not killed.

    A running fit rewrites its segment every HEARTBEAT_SECONDS; a run killed mid-fit never
    finishes its segment, and its reservation lapses once the file is RESERVATION_STALE_SECONDS
    old. The age comes from the storage's modification time, never from `updated_at`, which the
    writer's clock stamps (a host behind or ahead would make reservations lapse at once, or
    hold for hours). Without a trustworthy modification time, the reservation holds until the
    segment is finished (fail closed; `release_reservation` finishes a killed run's).
    """
    return self.finished_at is None and bool(self.reserved_steps) and _may_be_running(age_seconds)

  def pre_check_steps(self, age_seconds: Optional[float]) -> int:
    """The noisy steps a policy pre-check counts for this segment: those it took, and while it
    holds a reservation (see `reserving`), at least those it reserved.

    A lapsed reservation counts the steps it recorded: an upper bound of what it spent, since
    every step is recorded before it runs. This is safe even for a live run wrongly judged dead:
    reservations only gate pre-checks, every epsilon (evaluator, report) counts recorded steps
    alone, so the worst case is a run that trains and is refused afterwards, as without
    reservations.
    """
    if not self.reserving(age_seconds):
      return self.noisy_steps
    return max(self.noisy_steps, self.reserved_steps)

  def validate(self, where: str) -> None:
    """Raises LedgerError (naming `where`) unless the facts are possible and consistent:
    what every segment read from a file, and every one built from a plan, must pass."""
    size = self.dataset_size
    _check(
      _whole_number(size) and 1 <= size <= _MAX_DATASET_SIZE,
      f"{where}: dataset_size must be an integer in [1, 2**53]; got {str(size)[:40]}",
    )
    _check(
      self.sampling in SAMPLING_METHODS,
      f"{where}: sampling must be one of {SAMPLING_METHODS}; got {self.sampling!r}",
    )
    _check(
      _finite_number(self.sampling_rate) and 0 < self.sampling_rate <= 1,
      f"{where}: sampling_rate must be in (0, 1]; got {self.sampling_rate!r}",
    )
    _check(
      _whole_number(self.batch_size) and 1 <= self.batch_size <= size,
      f"{where}: batch_size must be in [1, dataset_size]; got {self.batch_size!r}",
    )
    _check(
      math.isclose(self.sampling_rate, self.batch_size / size, rel_tol=1e-9),
      f"{where}: sampling_rate {self.sampling_rate} is not batch_size/dataset_size "
      f"= {self.batch_size}/{size}",
    )
    _check(
      _finite_number(self.noise_multiplier) and self.noise_multiplier >= 0,
      f"{where}: noise_multiplier must be a finite number >= 0; got {self.noise_multiplier!r}",
    )
    _check(
      _finite_number(self.l2_norm_clip) and self.l2_norm_clip > 0,
      f"{where}: l2_norm_clip must be > 0; got {self.l2_norm_clip!r}",
    )
    _check(
      self.num_microbatches is None
      or (_whole_number(self.num_microbatches) and self.num_microbatches >= 1),
      f"{where}: num_microbatches must be null or >= 1; got {self.num_microbatches!r}",
    )
    _check(
      _whole_number(self.physical_batch_size) and self.physical_batch_size >= 1,
      f"{where}: physical_batch_size must be >= 1; got {self.physical_batch_size!r}",
    )
    _check(
      _whole_number(self.planned_steps) and self.planned_steps >= 1,
      f"{where}: planned_steps must be >= 1; got {self.planned_steps!r}",
    )
    _check(
      isinstance(self.seeded, bool), f"{where}: seeded must be true or false; got {self.seeded!r}"
    )
    _check(
      _whole_number(self.noisy_steps) and 0 <= self.noisy_steps <= self.planned_steps,
      f"{where}: noisy_steps must be in [0, planned_steps={self.planned_steps}]; got "
      f"{self.noisy_steps!r}",
    )
    _check(
      self.reserved_steps is None
      or (_whole_number(self.reserved_steps) and 0 <= self.reserved_steps <= self.planned_steps),
      f"{where}: reserved_steps must be null or in [0, planned_steps="
      f"{self.planned_steps}]; got {self.reserved_steps!r}",
    )
    for name in (
      "started_at",
      "updated_at",
      "dataset_fingerprint",
      "data_source",
      "run_id",
      "segment_id",
      "finished_at",
    ):
      _check(
        _optional_text(getattr(self, name)),
        f"{where}: {name} must be a string; got {getattr(self, name)!r}",
      )
    _check(
      self.predecessors is None
      or (
        isinstance(self.predecessors, list)
        and all(
          isinstance(p, dict)
          and set(p) == {"segment_id", "noisy_steps"}
          and isinstance(p["segment_id"], str)
          and _whole_number(p["noisy_steps"])
          and p["noisy_steps"] >= 0
          for p in self.predecessors
        )
      ),
      f"{where}: predecessors must be null or a list of {{segment_id, noisy_steps}}",
    )


def _may_be_running(age_seconds: Optional[float]) -> bool:
  """Whether the run of an unfinished segment whose file is `age_seconds` old (None: unknown)
  may still be training: it rewrites its file every HEARTBEAT_SECONDS while it does."""
  return age_seconds is None or age_seconds <= RESERVATION_STALE_SECONDS


def _age(modified: Optional[float], now: float) -> tuple:
  """(seconds since `modified`, None), or (None, why) when the modification time cannot be
  judged: none given (ram://), or one no storage stamps on a write (<= 0, or ahead of `now` by
  over MODIFIED_TIME_SLACK_SECONDS); judged, it would hold a killed run's reservation for ever,
  or for as long as it is ahead."""
  if modified is None:
    return None, "the storage gives no modification time"
  if modified <= 0 or modified > now + MODIFIED_TIME_SLACK_SECONDS:
    when = "not after 1970" if modified <= 0 else f"{modified - now:.0f} s in the future"
    return None, f"its segment file's modification time is suspect ({when})"
  return now - modified, None


def _reservation_note(
  segment: Segment, age: Optional[float], why: Optional[str], where: Optional[str]
) -> str:
  """How the reservation of `segment` (its file `age` old, or `why` not judged) ends, and how to
  release it by hand, for the messages that refuse a run because of it."""
  if why is None:
    lapses = format_time(time.time() + RESERVATION_STALE_SECONDS - age)
    holds = (
      f"last written {age:.0f} s ago, its reservation lapses at {lapses} unless it "
      f"writes again ({RESERVATION_STALE_SECONDS // 60} min after its last write)"
    )
  else:
    holds = f"{why}, so its reservation holds until it finishes"
  return (
    f"{holds}; if that run was killed: dp-tfx release-reservation {where or 'LEDGER'} "
    f"--segment {segment.segment_id} --force"
  )


def format_time(seconds: float) -> str:
  """A time (seconds since the epoch) as ISO 8601 UTC to the second, for messages."""
  return (
    datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    .isoformat(timespec="seconds")
    .replace("+00:00", "Z")
  )


_FORMAT_2_SEGMENT_FIELDS = {
  "dataset_size",
  "dataset_fingerprint",
  "data_source",
  "run_id",
  "segment_id",
}
_RESERVATION_FIELDS = {"reserved_steps", "finished_at"}
_CHAIN_FIELDS = {"predecessors"}
_REQUIRED_SEGMENT_FIELDS = {field.name for field in dataclasses.fields(Segment)} - (
  _FORMAT_2_SEGMENT_FIELDS | _RESERVATION_FIELDS | _CHAIN_FIELDS
)


def _composed(counted) -> dp_accounting.DpEvent:
  """The composition of [(segment, steps)]: each segment's steps are its own Poisson-sampled
  Gaussian event. Segments with the same q, sigma and clipping unit (e.g. reruns or concurrent
  runs of one plan) are one self-composed event of their summed steps: the same composition
  (it commutes), which the PLD accountant computes in one go instead of one per segment."""
  steps_by_facts: dict = {}
  for segment, steps in counted:
    key = (segment.sampling_rate, segment.noise_multiplier, segment.num_microbatches)
    steps_by_facts[key] = steps_by_facts.get(key, 0) + steps
  return accounting.compose(
    [
      accounting.dp_sgd_event(q, sigma, steps, microbatches)
      for (q, sigma, microbatches), steps in steps_by_facts.items()
    ]
  )


def _order(segment: Segment):
  return (segment.started_at or "", segment.segment_id or "")


def _new_segment_id() -> str:
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
  # A full uuid4: on object stores, where creating a file cannot be made exclusive, the name
  # alone keeps two runs' segments apart.
  return f"{SEGMENT_PREFIX}{stamp}-{uuid.uuid4().hex}"


def new_run_id() -> str:
  return uuid.uuid4().hex[:12]


# Sizes a float holds exactly: q = B / N and delta = 1 / N are floats.
_MAX_DATASET_SIZE = 2**53


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise LedgerError(message)


def _finite_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole_number(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _optional_text(value: Any) -> bool:
  return value is None or isinstance(value, str)


def _segment_from_dict(fields: Any, where: str) -> Segment:
  _check(isinstance(fields, dict), f"{where}: a segment must be a JSON object")
  unknown = unknown_fields(Segment, fields, "segment")
  if unknown:
    raise LedgerError(f"{where}: {unknown}")
  # Every fact must be written out: a default (noisy_steps 0) must never stand in for a lost one.
  # Only what format 2 added may be absent, in a format-1 ledger (filled in from the ledger), and
  # the reservation, in a record older than reservations (it reserved nothing).
  missing = sorted(_REQUIRED_SEGMENT_FIELDS - set(fields))
  _check(not missing, f"{where}: missing segment fields {missing}")
  return Segment(**fields)


def _check_writable(path: str) -> None:
  if files.scheme(path) not in files.WHOLE_REPLACE_SCHEMES:
    # A crash between deleting the old file and renaming the new one would leave none, and the
    # next run would start counting from zero: refuse rather than risk under-counting.
    raise LedgerError(
      f"a ledger cannot be written on {files.scheme(path)}:// (no whole-file "
      "replace there); use a local path, gs:// or s3://"
    )


def _check_key_kept(signed: bool, where: str) -> None:
  """Raises LedgerError if `where` holds signed records and no ledger key is set: a run that
  forgot the key would write unsigned records there, which every later run that requires
  signatures refuses, for good. (Reading, for a report, needs no key.)"""
  if signed and signing.configured_key() is None:
    raise LedgerError(
      f"{where} holds signed records, but no ledger key is set ({signing.KEY_ENV} or "
      f"{signing.KEY_FILE_ENV}): this run's records would be unsigned, and every run that "
      "requires signatures would refuse them for good. Set the key it was signed with"
    )


def check_chain(segments: list, history_dir: Optional[str]) -> None:
  """Raises LedgerError unless every segment that a segment of the history saw when it started
  (its `predecessors`) is still there, with at least the steps it had then: a segment deleted or
  shortened after a later run opened the history is found without any other record of it.
  (Checked after the snapshot's and MLMD's checks, whose messages say more where they apply.)"""
  steps_by_id = {segment.segment_id: segment.noisy_steps for segment in segments}
  for segment in segments:
    for seen in segment.predecessors or ():
      now = steps_by_id.get(seen["segment_id"])
      _check(
        now is not None,
        f"segment {seen['segment_id']}, which segment "
        f"{segment.segment_id} saw when it started, is missing from the ledger history "
        f"{history_dir}: it was deleted or renamed, and its steps would drop out of the "
        "total",
      )
      _check(
        now >= seen["noisy_steps"],
        f"segment {seen['segment_id']} in the ledger history "
        f"{history_dir} records {now} noisy steps, fewer than the {seen['noisy_steps']} "
        f"segment {segment.segment_id} saw when it started: it was shortened",
      )


def _check_still_recorded(recorded_segments, current: dict, history_dir: str) -> None:
  """Raises LedgerError unless every recorded segment is still in the history (`current`, by
  segment id) with the same facts and at least as many steps."""
  for recorded in recorded_segments:
    now = current.get(recorded.segment_id)
    if now is None:
      raise LedgerError(
        f"segment {recorded.segment_id} is missing from the ledger history "
        f"{history_dir}: it was deleted or renamed"
      )
    if now.fixed_facts() != recorded.fixed_facts():
      changed = sorted(k for k, v in recorded.fixed_facts().items() if now.fixed_facts()[k] != v)
      raise LedgerError(
        f"segment {recorded.segment_id} in the ledger history {history_dir} "
        f"differs from the record of it ({', '.join(changed)})"
      )
    if now.noisy_steps < recorded.noisy_steps:
      raise LedgerError(
        f"segment {recorded.segment_id} in the ledger history {history_dir} "
        f"records {now.noisy_steps} noisy steps, fewer than the "
        f"{recorded.noisy_steps} recorded before: it was shortened"
      )


class LedgerHistory:
  """A directory where every training run on a data source records its steps, safely concurrent.

  Each segment (one `fit` of one run) is a file of its own, `segment-<time>-<random>.json`,
  created under a fresh name and only ever rewritten by the process that created it (its step
  count grows, nothing else changes; `release_reservation` may finish a killed run's). No
  process reads, merges and rewrites another's record, so no update can be lost, however many
  runs write at once, on a local disk or an object store alike (a file is replaced whole
  through a temporary and a rename). The history's total is the composition of every segment
  file in it, each with its own content hash.

  Format-1 ledgers found there (one file per exact dataset, written before segment files) are
  read as well, never written: what they recorded keeps counting.
  """

  def __init__(self, directory: os.PathLike | str, key: Optional[bytes] = None):
    """`key`: if given, every record there must be signed with it (see dp_tfx.signing)."""
    self.directory = os.fspath(directory)
    self.key = key
    # After `read`: when the storage last modified the file of each segment (seconds since the
    # epoch, by segment id; None where it gives no modification time), and whether any record
    # there carries a signature.
    self.modified: dict = {}
    self.signed = False

  def segment_path(self, segment_id: str) -> str:
    return os.path.join(self.directory, segment_id + ".json")

  def read(self, privacy_unit: Optional[str] = None) -> list:
    """Every segment recorded in the history now, ordered by start time.

    Raises:
      LedgerError: if a file there is malformed, was edited (content hash), counts another
        privacy unit than `privacy_unit` (when given), or is not a ledger record at all: a record
        renamed, hidden or moved into a subdirectory must not silently drop out of the total.
    """
    segments, modified_by_id, signed = [], {}, False
    for name in files.listdir(self.directory):
      if _WRITE_IN_FLIGHT.fullmatch(name):  # a temporary of files.write_bytes
        # Renamed within milliseconds; one that stays is a crash's leftover or a record hidden
        # under a temporary's name, and must not silently drop out of the total.
        age = files.age_seconds(os.path.join(self.directory, name))  # None: renamed meanwhile
        _check(
          age is None or age < _STALE_TEMPORARY_SECONDS,
          f"ledger history {self.directory}: {name} has the name of a write in progress but "
          f"is over {_STALE_TEMPORARY_SECONDS} s old: a record hidden under it, or a "
          "crash's leftover (remove it only if its segment file is there too)",
        )
        continue
      path = os.path.join(self.directory, name)
      if not name.endswith(".json") or files.is_dir(path):
        raise LedgerError(
          f"ledger history {self.directory}: {name} is not a ledger record; "
          "nothing else belongs there (move it out if it is not one)"
        )
      try:
        found, unit, signed_file = self._read_file(path, name, self.key)
      except LedgerError as error:
        raise type(error)(f"ledger history {self.directory}: {name}: {error}") from None
      if privacy_unit is not None and unit != privacy_unit:
        raise LedgerError(
          f"ledger history {self.directory}: {name} counts {unit}s, this run "
          f"{privacy_unit}s; use another ledger history for other privacy units"
        )
      try:  # after reading: a write in between makes the record look younger, never staler
        modified = files.modified_time(path)
      except OSError:  # gone since: its reservation counts (fail closed)
        modified = None
      for segment in found:
        modified_by_id[segment.segment_id] = modified
      segments.extend(found)
      signed = signed or signed_file
    ids = [segment.segment_id for segment in segments]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    _check(
      not duplicated,
      f"ledger history {self.directory}: segment ids {duplicated} appear more than once",
    )
    self.modified, self.signed = modified_by_id, signed
    return sorted(segments, key=_order)

  @staticmethod
  def _read_file(path: str, name: str, key: Optional[bytes]):
    try:
      text = files.read_text(path)
    except (OSError, UnicodeDecodeError) as error:
      raise LedgerError(f"cannot be read: {error}") from None
    body, signed = _verified_body(text, key)
    if body.get("kind") == SEGMENT_KIND:
      _check(
        body.get("format_version") == FORMAT_VERSION,
        f"unsupported segment format_version {body.get('format_version')!r}",
      )
      unit = body.get("privacy_unit")
      _check(isinstance(unit, str) and unit, "privacy_unit is missing")
      segment = _segment_from_dict(body.get("segment"), "segment")
      _check(
        isinstance(segment.segment_id, str) and segment.segment_id + ".json" == name,
        f"the file's name does not match its segment_id {segment.segment_id!r}: it was "
        "renamed or copied",
      )
      segment.validate("segment")
      return [segment], unit, signed
    if body.get("format_version") == 1:  # a whole ledger of the first format: read, never written
      ledger = PrivacyLedger._from_body(body)
      for index, segment in enumerate(ledger.segments):
        segment.segment_id = f"{name}#{index}"
        segment.run_id = segment.run_id or f"format-1 ledger {name}"
      return ledger.segments, ledger.privacy_unit, signed
    raise LedgerError("not a segment file (a whole ledger does not belong in a ledger history)")


def read_history(directory: os.PathLike | str, privacy_unit: Optional[str] = None) -> list:
  """The segments recorded in the ledger history at `directory` (see LedgerHistory.read)."""
  return LedgerHistory(directory).read(privacy_unit)


def _segment_document(segment: Segment, privacy_unit: str) -> str:
  return _document(
    {
      "format_version": FORMAT_VERSION,
      "kind": SEGMENT_KIND,
      "library_version": __version__,
      "privacy_unit": privacy_unit,
      "segment": dataclasses.asdict(segment),
    }
  )


class PrivacyLedger:
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

  Args:
    dataset_size: N of this run's training data (privacy units).
    dataset_fingerprint: a digest of this run's training data (see `dataset_fingerprint`); it
      describes the data, it does not key the budget.
    privacy_unit: what one unit of N is ("example"; a sequence for language models).
    segments: the segments recorded so far (each carries its own dataset_size).
    model_digest: a digest of the trained model's files, set when the model is exported.
    data_source: the name of the data source this run trained on (recorded, reported).
    run_id: this run's id, recorded in each of its segments.
    history_dir: the ledger history the segments come from, if there is one.
  """

  def __init__(
    self,
    dataset_size: int,
    dataset_fingerprint: str,
    privacy_unit: str = EXAMPLE,
    segments: Optional[Sequence[Segment]] = None,
    model_digest: Optional[str] = None,
    library_version: str = __version__,
    created_at: Optional[str] = None,
    data_source: Optional[str] = None,
    run_id: Optional[str] = None,
    history_dir: Optional[str] = None,
  ):
    self.dataset_size = dataset_size
    self.dataset_fingerprint = dataset_fingerprint
    self.privacy_unit = privacy_unit
    self.segments = list(segments or [])
    self.model_digest = model_digest
    self.library_version = library_version
    self.created_at = created_at or _now()
    self.data_source = data_source
    self.run_id = run_id or new_run_id()
    self.history_dir = os.fspath(history_dir) if history_dir is not None else None
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

  # -- facts -------------------------------------------------------------------------------------

  @property
  def noisy_steps(self) -> int:
    return sum(segment.noisy_steps for segment in self.segments)

  @property
  def spent_segments(self) -> list:
    """The segments that took noisy steps: only these spent privacy, so only their facts (seed,
    sampling, N) bind a policy. A run refused or killed before its first step leaves a segment
    of 0 steps, which must not lock its history out. (In a pre-check's copy, a reservation
    counts as steps: see with_reservations.)"""
    return [segment for segment in self.segments if segment.noisy_steps > 0]

  @property
  def largest_dataset_size(self) -> int:
    """The largest N among this run's data and every segment's that spent steps: delta "1/N"
    uses it, so that delta is at most one over the size of every dataset the total covers."""
    return max(
      [self.dataset_size]
      + [s.dataset_size for s in self.spent_segments if _whole_number(s.dataset_size)]
    )

  def dp_event(self) -> dp_accounting.DpEvent:
    """All segments composed: the privacy cost of everything recorded."""
    return _composed([(segment, segment.noisy_steps) for segment in self.segments])

  def epsilon(self, delta: float, accountant: str = accounting.PLD) -> float:
    return self.epsilon_result(delta, accountant).epsilon

  def epsilon_result(
    self, delta: float, accountant: str = accounting.PLD
  ) -> accounting.EpsilonResult:
    """epsilon(delta) of everything recorded, with the accountant's reason when it is inf."""
    return accounting.epsilon_result(self.dp_event(), delta, accountant)

  def dp_event_after(self, steps: int) -> dp_accounting.DpEvent:
    """The cost of the first `steps` noisy steps across segments, in the order they started."""
    counted, left = [], steps
    for segment in self.segments:
      taken = min(left, segment.noisy_steps)
      counted.append((segment, taken))
      left -= taken
    return _composed(counted)

  def epsilon_curve(self, delta: float, accountant: str = accounting.PLD, points: int = 20) -> list:
    """[(step, epsilon)] at about `points` evenly spaced steps up to the last one recorded."""
    total = self.noisy_steps
    steps = (
      sorted({max(1, round(total * i / points)) for i in range(1, points + 1)}) if total else []
    )
    return accounting.epsilon_curve(self.dp_event_after, steps, delta, accountant)

  @property
  def rigorous(self) -> bool:
    """False when any segment that took steps used shuffled batches: the Poisson-based bound is
    then heuristic."""
    return all(segment.sampling == POISSON for segment in self.spent_segments)

  def runs(self) -> list:
    """Every run the total includes, in the order they started: run id, data source, data
    size(s), segments and noisy steps (a run still training shows the steps recorded so far)."""
    runs: dict = {}
    for segment in self.segments:
      run = runs.setdefault(
        segment.run_id,
        {
          "run_id": segment.run_id,
          "data_source": segment.data_source,
          "dataset_sizes": [],
          "dataset_fingerprints": [],
          "segments": 0,
          "noisy_steps": 0,
          "planned_steps": 0,
          "started_at": segment.started_at,
          "updated_at": segment.updated_at,
          "this_run": segment.run_id == self.run_id,
        },
      )
      for key, value in (
        ("dataset_sizes", segment.dataset_size),
        ("dataset_fingerprints", segment.dataset_fingerprint),
      ):
        if value not in run[key]:
          run[key].append(value)
      run["segments"] += 1
      run["noisy_steps"] += segment.noisy_steps
      run["planned_steps"] += segment.planned_steps
      run["updated_at"] = max(run["updated_at"] or "", segment.updated_at or "")
    return list(runs.values())

  def validate(self) -> None:
    """Raises LedgerError unless every recorded fact is possible and consistent."""
    _check(
      _whole_number(self.dataset_size) and self.dataset_size >= 1,
      f"dataset_size must be an integer >= 1; got {self.dataset_size!r}",
    )
    _check(
      isinstance(self.dataset_fingerprint, str) and self.dataset_fingerprint,
      "dataset_fingerprint is missing",
    )
    _check(isinstance(self.privacy_unit, str) and self.privacy_unit, "privacy_unit is missing")
    for name in ("data_source", "run_id", "history_dir", "model_digest"):
      _check(
        _optional_text(getattr(self, name)), f"{name} must be a string; got {getattr(self, name)!r}"
      )
    seen = set()
    for index, segment in enumerate(self.segments):
      segment.validate(f"segment {index}")
      _check(
        segment.segment_id is None or segment.segment_id not in seen,
        f"segment {index}: segment_id {segment.segment_id!r} appears twice",
      )
      seen.add(segment.segment_id)

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

  # -- serialisation -----------------------------------------------------------------------------

  def body(self) -> dict:
    return {
      "format_version": FORMAT_VERSION,
      "library_version": self.library_version,
      "created_at": self.created_at,
      "privacy_unit": self.privacy_unit,
      "dataset_size": self.dataset_size,
      "dataset_fingerprint": self.dataset_fingerprint,
      "data_source": self.data_source,
      "run_id": self.run_id,
      "history_dir": self.history_dir,
      "model_digest": self.model_digest,
      "segments": [dataclasses.asdict(segment) for segment in self.segments],
    }

  def content_hash(self) -> str:
    return _hash_body(self.body())

  def to_json(self) -> str:
    return _document(self.body())

  @classmethod
  def from_json(cls, text: str, key: Optional[bytes] = None) -> "PrivacyLedger":
    """Parses and verifies a ledger (format 1 or 2).

    Raises:
      LedgerIntegrityError: if the body does not match its content hash.
      LedgerError: if the text is not a ledger or its facts are impossible.
    """
    return cls._from_body(_verified_body(text, key)[0])

  @classmethod
  def _from_body(cls, body: dict) -> "PrivacyLedger":
    version = body.get("format_version")
    _check(version in (1, FORMAT_VERSION), f"unsupported ledger format_version {version!r}")
    _check(
      body.get("kind", "ledger") == "ledger" and isinstance(body.get("segments"), list),
      "not a whole ledger (a segment file of a ledger history?)",
    )
    try:
      segments = [
        _segment_from_dict(fields, f"segment {index}")
        for index, fields in enumerate(body["segments"])
      ]
      extra = (
        {}
        if version == 1
        else {name: body[name] for name in ("data_source", "run_id", "history_dir")}
      )
      ledger = cls(
        dataset_size=body["dataset_size"],
        dataset_fingerprint=body["dataset_fingerprint"],
        privacy_unit=body["privacy_unit"],
        segments=segments,
        model_digest=body.get("model_digest"),
        library_version=body["library_version"],
        created_at=body["created_at"],
        **extra,
      )
    except (KeyError, TypeError) as error:
      raise LedgerError(f"the ledger is missing or has malformed fields: {error}") from None
    if version == 1:  # one dataset for the whole ledger; each segment now says which it had
      for segment in ledger.segments:
        segment.dataset_size = ledger.dataset_size
        segment.dataset_fingerprint = ledger.dataset_fingerprint
    ledger.validate()
    return ledger

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
      self._written = _digest(data)
      if self._history is None:  # a one-file ledger: its file is where the storage's clock is read
        self._last_write = (self.path, time.monotonic())

  def _check_unchanged(self) -> None:
    """Raises LedgerError unless the file at `path` holds what this object last wrote or read
    there (or, before its first write, that no file is there): a one-file ledger written by two
    processes at once would lose one's steps; the second to write fails closed instead."""
    try:
      current = _digest(files.read_bytes(self.path))
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
    ledger.path, ledger._written, ledger.signed = files.normalised(path), _digest(data), signed
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


class Heartbeat:
  """A daemon thread that rewrites a ledger's current segment every `interval` seconds (see
  PrivacyLedger.heartbeat) until `stop`: while a fit runs, its reservation never looks stale.

  Each beat takes the ledger's lock, as every step's write does, and writes through the same
  flush (content hash, signature). A beat that fails (the storage, or a one-file ledger that
  another process rewrote) is logged (`error` keeps the last) and tried again at the next beat:
  a passing storage error must not let a long fit's reservation go stale. A lasting one is
  raised by the run's own next write.
  """

  def __init__(self, ledger: "PrivacyLedger", interval: float):
    self._stopped = threading.Event()
    self.error: Optional[BaseException] = None
    self._thread = threading.Thread(
      target=self._beat, args=(ledger, interval), daemon=True, name="dp_tfx-ledger-heartbeat"
    )
    self._thread.start()

  def _beat(self, ledger: "PrivacyLedger", interval: float) -> None:
    while not self._stopped.wait(interval):
      try:
        ledger.heartbeat()
      except Exception as error:  # the storage's errors too: the run's next write raises it
        self.error = error
        _LOG.warning("dp_tfx: a ledger heartbeat failed (tried again in %s s): %s", interval, error)

  def stop(self) -> None:
    """Stops the beats and waits for a write in progress to end."""
    self._stopped.set()
    self._thread.join()


def release_reservation(place: os.PathLike | str, segment_id: str, force: bool = False) -> Segment:
  """Marks the unfinished segment `segment_id` of the ledger history (a directory) or ledger
  file at `place` finished, as its fit would have at its end: for a run that was killed where
  its reservation cannot lapse (the storage gives no modification time, or a suspect one), or
  sooner than it would. Safe for the budget: epsilon counts recorded steps only, each recorded
  before it ran; a reservation only gates pre-checks.

  Written as its run would (content hash; signature with a ledger key, which must be set where
  records are signed: _check_key_kept). Unless `force`, refused while its run may be alive
  (its file modified under RESERVATION_STALE_SECONDS ago, or when that cannot be judged): a
  rewrite racing the run's next step could drop that step.

  Returns:
    The segment as released (its recorded and reserved steps, its run).

  Raises:
    LedgerError: if there is no such segment, it holds no reservation (finished, or reserved
      nothing), may belong to a live run (without `force`), or was rewritten meanwhile.
  """
  place, key = os.fspath(place), signing.configured_key()
  _check_writable(place)
  if files.is_dir(place):
    history, ledger = LedgerHistory(place), None
    found, signed, modified = history.read(), history.signed, history.modified
  else:
    history, ledger = None, PrivacyLedger.load(place, key)
    found, signed, modified = ledger.segments, ledger.signed, ledger._modified
  _check_key_kept(signed, place)
  segment = next((s for s in found if s.segment_id == segment_id), None)
  _check(segment is not None, f"{place} holds no segment {segment_id}")
  _check(
    segment.finished_at is None and bool(segment.reserved_steps),
    f"segment {segment_id} (run {segment.run_id}) holds no reservation: "
    + (f"it finished at {segment.finished_at}" if segment.finished_at else "it reserved no steps"),
  )
  age, why = _age(modified.get(segment_id), time.time())
  if not force and _may_be_running(age):
    raise LedgerError(
      f"segment {segment_id} of run {segment.run_id} may belong to a run still training (a "
      f"running fit rewrites its segment every {HEARTBEAT_SECONDS} s; "
      + (why or f"this one was last written {age:.0f} s ago")
      + "), so nothing was written. "
      "If that run was killed, add --force"
    )
  if ledger is not None:
    segment.finished_at = _now()
    ledger._flush_whole()  # refused if the file changed since it was read
    return segment
  path = history.segment_path(segment_id)
  (segment,), unit, _ = LedgerHistory._read_file(path, segment_id + ".json", key)
  _check(
    files.modified_time(path) == modified[segment_id],
    f"segment {segment_id} was rewritten meanwhile: its run is alive; nothing was written",
  )
  segment.finished_at = _now()
  files.write_text(path, _segment_document(segment, unit))
  return segment


def _document(body: dict) -> str:
  """A ledger or segment file: the body, its content hash and, when a ledger key is configured
  (see dp_tfx.signing), its signature."""
  document = {"body": body, "content_hash": _hash_body(body)}
  key = signing.configured_key()
  if key is not None:
    document["signature"] = signing.sign(_canonical(body), key)
  return json.dumps(document, indent=2, sort_keys=True)


def _verified_body(text: str, key: Optional[bytes] = None) -> tuple:
  """(body, signed): the body of a ledger or segment document whose content hash matches it (and,
  with `key`, that is signed with that key), and whether it carries a signature."""
  try:
    document = json.loads(text)
  except (ValueError, RecursionError) as error:  # JSONDecodeError, huge integers, deep nesting
    raise LedgerError(f"the ledger is not valid JSON: {str(error)[:200]}") from None
  _check(
    isinstance(document, dict)
    and isinstance(document.get("body"), dict)
    and isinstance(document.get("content_hash"), str),
    "the ledger must be a JSON object with 'body' and 'content_hash'",
  )
  body = document["body"]
  if _hash_body(body) != document["content_hash"]:
    raise LedgerIntegrityError(
      "the ledger's content does not match its content_hash: it was modified after it was written"
    )
  if key is not None and not signing.is_valid(_canonical(body), document.get("signature"), key):
    raise LedgerIntegrityError(
      "the record is unsigned or its signature does not match the ledger key: "
      + (
        "it was written without a key"
        if "signature" not in document
        else "it was changed, or signed with another key"
      )
    )
  return body, "signature" in document


def _canonical(body: dict) -> bytes:
  try:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
  except ValueError as error:  # NaN or infinity smuggled into the facts
    raise LedgerError(f"the ledger holds a value JSON cannot represent: {error}") from None


def _hash_body(body: dict) -> str:
  return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def _digest(data: bytes) -> str:
  return "sha256:" + hashlib.sha256(data).hexdigest()
