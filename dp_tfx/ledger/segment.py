"""A segment: one `fit` of one training run, the unit a ledger records and composes.

A segment holds the facts the accountant needs (the data's size N, sampling, q, sigma, C,
microbatches) and the noisy steps that ran, counted before each runs. Every segment is its own
Poisson-sampled Gaussian event, and all segments recorded for a data source compose, whatever
data each one had. Facts read from a file are validated here once (`Segment.validate`,
`_segment_from_dict`), whichever record they came from (a ledger file, a segment file, a
format-1 ledger), so every reader refuses the same impossible or missing facts.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import uuid
from typing import Any, Optional

import dp_accounting

from dp_tfx import accounting
from dp_tfx.canonical import canonical_digest
from dp_tfx.checks import unknown_fields
from dp_tfx.config import SAMPLING_METHODS
from dp_tfx.ledger.errors import LedgerError, _check
from dp_tfx.ledger.reservations import _may_be_running

SEGMENT_PREFIX = "segment-"


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


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

  def fixed_facts_hash(self) -> str:
    """SHA-256 of `fixed_facts()` as canonical JSON: what a record of the segment that keeps no
    copy of its facts (MLMD's) compares it by."""
    return canonical_digest(self.fixed_facts(), allow_nan=False)

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
