"""The privacy ledger: the facts of what DP training actually did, kept tamper-evident.

Privacy is accounted from this record only (never from a declared epsilon). Each call of `fit` on
a dataset is a *segment* (sampling, q, sigma, C, microbatches, noisy steps executed); segments on
the same data compose, so restarting a run adds to what was already spent. The trainer counts a
step before executing it and flushes the file at once, so a run killed mid-epoch leaves a ledger
that counts every step it took (at worst one more).

The content hash (SHA-256 of the canonical JSON body) makes accidental or naive edits evident; it
is not a signature against someone who recomputes it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from typing import Any, Optional, Sequence

import dp_accounting
import numpy as np

from dp_tfx import accounting, files
from dp_tfx.config import SAMPLING_METHODS
from dp_tfx.version import __version__

FORMAT_VERSION = 1
LEDGER_FILE_NAME = "privacy_ledger.json"
EXAMPLE = "example"
SEQUENCE = "sequence"  # the privacy unit of language models trained on text cut into sequences


class LedgerError(ValueError):
  """The ledger is missing, malformed or describes something impossible or inconsistent."""


class LedgerIntegrityError(LedgerError):
  """The ledger's content does not match its hash: it was edited after it was written."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
  """One training run on the data: the facts the accountant needs, and how many steps ran."""

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

  def dp_event(self, steps: Optional[int] = None) -> dp_accounting.DpEvent:
    """The event of this segment's first `steps` noisy steps (default: all that ran)."""
    return accounting.dp_sgd_event(self.sampling_rate, self.noise_multiplier,
                                   self.noisy_steps if steps is None else steps,
                                   self.num_microbatches)


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise LedgerError(message)


def _finite_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole_number(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class PrivacyLedger:
  """What DP training did on one dataset, serialised as JSON with a content hash.

  Args:
    dataset_size: N, the number of privacy units in the training data.
    dataset_fingerprint: a digest of the training data (see `dataset_fingerprint`).
    privacy_unit: what one unit of N is ("example"; a sequence for language models).
    segments: the training runs recorded so far.
    model_digest: a digest of the trained model's files, set when the model is exported.
  """

  def __init__(self, dataset_size: int, dataset_fingerprint: str, privacy_unit: str = EXAMPLE,
               segments: Optional[Sequence[Segment]] = None, model_digest: Optional[str] = None,
               library_version: str = __version__, created_at: Optional[str] = None):
    self.dataset_size = dataset_size
    self.dataset_fingerprint = dataset_fingerprint
    self.privacy_unit = privacy_unit
    self.segments = list(segments or [])
    self.model_digest = model_digest
    self.library_version = library_version
    self.created_at = created_at or _now()
    self.path: Optional[str] = None

  # -- recording ---------------------------------------------------------------------------------

  def start_segment(self, plan, seeded: bool = False) -> Segment:
    """Opens a segment for a training run that follows `plan` (a TrainingPlan) on this data.

    `seeded` records that sampling and noise came from a fixed seed (reproducible for tests; not
    private if the seed is known), so a policy can refuse such runs.
    """
    if plan.dataset_size != self.dataset_size:
      raise LedgerError(f"this ledger describes {self.dataset_size} examples, the plan "
                        f"{plan.dataset_size}: use a new ledger for other data")
    segment = Segment(
        sampling=plan.sampling, sampling_rate=plan.sampling_rate, batch_size=plan.batch_size,
        noise_multiplier=plan.noise_multiplier, l2_norm_clip=plan.l2_norm_clip,
        num_microbatches=plan.num_microbatches, physical_batch_size=plan.physical_batch_size,
        planned_steps=plan.steps, seeded=bool(seeded))
    self.segments.append(segment)
    self.flush()
    return segment

  def record_step(self) -> None:
    """Counts one noisy step of the current segment as spent, and writes the ledger out."""
    if not self.segments:
      raise LedgerError("record_step before start_segment")
    segment = self.segments[-1]
    segment.noisy_steps += 1
    segment.updated_at = _now()
    self.flush()

  def set_model_digest(self, digest: str) -> None:
    self.model_digest = digest
    self.flush()

  # -- facts -------------------------------------------------------------------------------------

  @property
  def noisy_steps(self) -> int:
    return sum(segment.noisy_steps for segment in self.segments)

  def dp_event(self) -> dp_accounting.DpEvent:
    """All segments composed: the privacy cost of everything recorded."""
    return accounting.compose([segment.dp_event() for segment in self.segments])

  def epsilon(self, delta: float, accountant: str = accounting.PLD) -> float:
    return accounting.epsilon_of_event(self.dp_event(), delta, accountant)

  def dp_event_after(self, steps: int) -> dp_accounting.DpEvent:
    """The cost of the first `steps` noisy steps across segments, in the order they ran."""
    events, left = [], steps
    for segment in self.segments:
      taken = min(left, segment.noisy_steps)
      events.append(segment.dp_event(taken))
      left -= taken
    return accounting.compose(events)

  def epsilon_curve(self, delta: float, accountant: str = accounting.PLD,
                    points: int = 20) -> list:
    """[(step, epsilon)] at about `points` evenly spaced steps up to the last one recorded."""
    total = self.noisy_steps
    steps = sorted({max(1, round(total * i / points)) for i in range(1, points + 1)}) if total else []
    return accounting.epsilon_curve(self.dp_event_after, steps, delta, accountant)

  @property
  def rigorous(self) -> bool:
    """False when any segment used shuffled batches: the Poisson-based bound is then heuristic."""
    return all(segment.sampling == "poisson" for segment in self.segments)

  def validate(self) -> None:
    """Raises LedgerError unless every recorded fact is possible and consistent."""
    _check(_whole_number(self.dataset_size) and self.dataset_size >= 1,
           f"dataset_size must be an integer >= 1; got {self.dataset_size!r}")
    _check(isinstance(self.dataset_fingerprint, str) and self.dataset_fingerprint,
           "dataset_fingerprint is missing")
    _check(isinstance(self.privacy_unit, str) and self.privacy_unit, "privacy_unit is missing")
    for index, segment in enumerate(self.segments):
      where = f"segment {index}"
      _check(segment.sampling in SAMPLING_METHODS,
             f"{where}: sampling must be one of {SAMPLING_METHODS}; got {segment.sampling!r}")
      _check(_finite_number(segment.sampling_rate) and 0 < segment.sampling_rate <= 1,
             f"{where}: sampling_rate must be in (0, 1]; got {segment.sampling_rate!r}")
      _check(_whole_number(segment.batch_size) and 1 <= segment.batch_size <= self.dataset_size,
             f"{where}: batch_size must be in [1, dataset_size]; got {segment.batch_size!r}")
      _check(math.isclose(segment.sampling_rate, segment.batch_size / self.dataset_size,
                          rel_tol=1e-9),
             f"{where}: sampling_rate {segment.sampling_rate} is not batch_size/dataset_size "
             f"= {segment.batch_size}/{self.dataset_size}")
      _check(_finite_number(segment.noise_multiplier) and segment.noise_multiplier >= 0,
             f"{where}: noise_multiplier must be a finite number >= 0; got "
             f"{segment.noise_multiplier!r}")
      _check(_finite_number(segment.l2_norm_clip) and segment.l2_norm_clip > 0,
             f"{where}: l2_norm_clip must be > 0; got {segment.l2_norm_clip!r}")
      _check(segment.num_microbatches is None or (
          _whole_number(segment.num_microbatches) and segment.num_microbatches >= 1),
             f"{where}: num_microbatches must be null or >= 1; got {segment.num_microbatches!r}")
      _check(_whole_number(segment.physical_batch_size) and segment.physical_batch_size >= 1,
             f"{where}: physical_batch_size must be >= 1; got {segment.physical_batch_size!r}")
      _check(_whole_number(segment.planned_steps) and segment.planned_steps >= 1,
             f"{where}: planned_steps must be >= 1; got {segment.planned_steps!r}")
      _check(isinstance(segment.seeded, bool),
             f"{where}: seeded must be true or false; got {segment.seeded!r}")
      _check(_whole_number(segment.noisy_steps) and
             0 <= segment.noisy_steps <= segment.planned_steps,
             f"{where}: noisy_steps must be in [0, planned_steps={segment.planned_steps}]; got "
             f"{segment.noisy_steps!r}")

  # -- serialisation -----------------------------------------------------------------------------

  def body(self) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "library_version": self.library_version,
        "created_at": self.created_at,
        "privacy_unit": self.privacy_unit,
        "dataset_size": self.dataset_size,
        "dataset_fingerprint": self.dataset_fingerprint,
        "model_digest": self.model_digest,
        "segments": [dataclasses.asdict(segment) for segment in self.segments],
    }

  def content_hash(self) -> str:
    return _hash_body(self.body())

  def to_json(self) -> str:
    return json.dumps({"body": self.body(), "content_hash": self.content_hash()}, indent=2,
                      sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "PrivacyLedger":
    """Parses and verifies a ledger.

    Raises:
      LedgerIntegrityError: if the body does not match its content hash.
      LedgerError: if the text is not a ledger or its facts are impossible.
    """
    try:
      document = json.loads(text)
    except json.JSONDecodeError as error:
      raise LedgerError(f"the ledger is not valid JSON: {error}") from None
    _check(isinstance(document, dict) and isinstance(document.get("body"), dict) and
           isinstance(document.get("content_hash"), str),
           "the ledger must be a JSON object with 'body' and 'content_hash'")
    body = document["body"]
    if _hash_body(body) != document["content_hash"]:
      raise LedgerIntegrityError("the ledger's content does not match its content_hash: it was "
                                 "modified after it was written")
    _check(body.get("format_version") == FORMAT_VERSION,
           f"unsupported ledger format_version {body.get('format_version')!r}")
    try:
      segments = [Segment(**segment) for segment in body["segments"]]
      ledger = cls(dataset_size=body["dataset_size"],
                   dataset_fingerprint=body["dataset_fingerprint"],
                   privacy_unit=body["privacy_unit"], segments=segments,
                   model_digest=body.get("model_digest"),
                   library_version=body["library_version"], created_at=body["created_at"])
    except (KeyError, TypeError) as error:
      raise LedgerError(f"the ledger is missing or has malformed fields: {error}") from None
    ledger.validate()
    return ledger

  def save(self, path: os.PathLike | str) -> str:
    """Writes the ledger to `path` (local or a URL such as gs://) atomically and keeps it there:
    later steps flush to it."""
    self.path = os.fspath(path)
    self.flush()
    return self.path

  def flush(self) -> None:
    if self.path is None:
      return
    if files.scheme(self.path) not in files.WHOLE_REPLACE_SCHEMES:
      # A crash between deleting the old ledger and renaming the new one would leave none, and
      # the next run would start counting from zero: refuse rather than risk under-counting.
      raise LedgerError(f"a ledger cannot be written on {files.scheme(self.path)}:// (no "
                        "whole-file replace there); use a local path, gs:// or s3://")
    files.write_text(self.path, self.to_json())  # never half-written, even on a crash

  @classmethod
  def load(cls, path: os.PathLike | str) -> "PrivacyLedger":
    path = os.fspath(path)
    if not files.exists(path) or files.is_dir(path):
      raise LedgerError(f"no privacy ledger at {path}")
    ledger = cls.from_json(files.read_text(path))
    ledger.path = path
    return ledger

  @classmethod
  def open_for(cls, path: Optional[os.PathLike | str], dataset_size: int,
               fingerprint: str, privacy_unit: str = EXAMPLE) -> "PrivacyLedger":
    """Continues the ledger at `path` (the same data) or starts a new one there.

    Raises:
      LedgerError: if the existing ledger describes other data or another privacy unit.
    """
    if path is not None and files.exists(path):
      ledger = cls.load(path)
      if ledger.dataset_fingerprint != fingerprint or ledger.dataset_size != dataset_size:
        raise LedgerError(f"the ledger at {path} describes other data ({ledger.dataset_size} "
                          f"examples, {ledger.dataset_fingerprint}); use a new ledger path")
      if ledger.privacy_unit != privacy_unit:
        raise LedgerError(f"the ledger at {path} counts {ledger.privacy_unit}s, this run "
                          f"{privacy_unit}s; use a new ledger path")
      return ledger
    ledger = cls(dataset_size=dataset_size, dataset_fingerprint=fingerprint,
                 privacy_unit=privacy_unit)
    if path is not None:
      ledger.save(path)
    return ledger


def _hash_body(body: dict) -> str:
  try:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
  except ValueError as error:  # NaN or infinity smuggled into the facts
    raise LedgerError(f"the ledger holds a value JSON cannot represent: {error}") from None
  return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
