"""What a ledger says: its run's facts, its segments, their composed cost, and its JSON body.

LedgerFacts is a ledger as read, with nothing of how it is kept: what the accountant, a policy
and a report need, and the body that the envelope (envelope.py) hashes and signs. PrivacyLedger
(privacy_ledger.py) adds recording and storage. They are two classes so that the ledger history
(history.py) can read a format-1 ledger (one whole ledger per file, the old one-file layout)
without importing PrivacyLedger, which itself writes into the history: no import cycle.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import dp_accounting

from dp_tfx import accounting
from dp_tfx.config import POISSON
from dp_tfx.ledger.envelope import _document, _hash_body, _verified_body
from dp_tfx.ledger.errors import LedgerError, _check
from dp_tfx.ledger.segment import (
  Segment,
  _now,
  _optional_text,
  _segment_from_dict,
  _whole_number,
  new_run_id,
)
from dp_tfx.version import __version__

FORMAT_VERSION = 2  # format 1 (one dataset per ledger, no segment files) is still read
EXAMPLE = "example"
SEQUENCE = "sequence"  # the privacy unit of language models trained on text cut into sequences


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


class LedgerFacts:
  """A ledger's facts as read, kept nowhere: this run's data, the segments recorded (what they
  cost, composed), and the body a ledger file holds (`body`, `to_json`, `from_json`).

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
  def from_json(cls, text: str, key: Optional[bytes] = None) -> "LedgerFacts":
    """Parses and verifies a ledger (format 1 or 2).

    Raises:
      LedgerIntegrityError: if the body does not match its content hash.
      LedgerError: if the text is not a ledger or its facts are impossible.
    """
    return cls._from_body(_verified_body(text, key)[0])

  @classmethod
  def _from_body(cls, body: dict) -> "LedgerFacts":
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
