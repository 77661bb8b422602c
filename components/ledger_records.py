"""What the DPTrainer records in MLMD about its PrivacyLedger artifact (`record_ledger`) and how
later runs read it back (`recorded_segments`, `verify_record`): defined here once, for both.
"""

from __future__ import annotations

import dataclasses
import json
from typing import List, Optional

from tfx.types import artifact

from dp_tfx import ledger as ledger_lib
from dp_tfx import signing
from dp_tfx.canonical import canonical_json
from dp_tfx.components.artifacts import string_property
from dp_tfx.ledger import LedgerError, Segment

LEDGER_HASH_PROPERTY = "content_hash"
# The ledger history the ledger's segments were recorded in ("" when it names none), and those
# segments as the DPTrainer saw them (see RecordedSegment): kept in MLMD, where whoever can
# delete a file of the history cannot delete them, so that a later evaluation can tell a segment
# that was deleted before any later run opened the history.
LEDGER_HISTORY_DIR_PROPERTY = "ledger_history_dir"
LEDGER_SEGMENTS_PROPERTY = "ledger_segments"
# Which artifact the record was written for (see RecordOrigin): its uri, and the pipeline, run and
# component that wrote it. MLMD assigns the artifact's id only when the run is published, after
# the DPTrainer recorded all this, so the uri (unique to the execution) stands for it.
LEDGER_RECORD_ORIGIN_PROPERTY = "ledger_record_origin"
# With a ledger key (dp_tfx.signing), an HMAC of the four properties above: the MLMD store is a
# file in the pipeline root, which whoever can delete a segment file can often edit as well.
LEDGER_RECORD_SIGNATURE_PROPERTY = "ledger_record_signature"
_SIGNED_PROPERTIES = (
  LEDGER_HASH_PROPERTY,
  LEDGER_HISTORY_DIR_PROPERTY,
  LEDGER_SEGMENTS_PROPERTY,
  LEDGER_RECORD_ORIGIN_PROPERTY,
)


@dataclasses.dataclass(frozen=True)
class RecordedSegment:
  """A segment as MLMD records it: its id, its noisy steps then and a hash of its fixed facts."""

  segment_id: str
  noisy_steps: int
  fixed_facts_sha256: str

  @classmethod
  def of(cls, segment: Segment) -> "RecordedSegment":
    return cls(segment.segment_id, segment.noisy_steps, segment.fixed_facts_hash())


@dataclasses.dataclass(frozen=True)
class RecordOrigin:
  """The artifact a ledger record was written for, and who wrote it: signed with the record, so
  that a record copied onto another artifact (whose own record and segment were then deleted)
  tells. `pipeline`, `pipeline_run_id` and `component` are None where the executor ran outside a
  pipeline (tests)."""

  uri: str
  pipeline: Optional[str] = None
  pipeline_run_id: Optional[str] = None
  component: Optional[str] = None

  def to_json(self) -> str:
    return canonical_json(dataclasses.asdict(self)).decode()


def record_ledger(
  ledger_artifact: artifact.Artifact,
  ledger: ledger_lib.PrivacyLedger,
  origin: Optional[RecordOrigin] = None,
) -> None:
  """Records on the PrivacyLedger artifact (MLMD custom properties) the saved `ledger`'s content
  hash, its ledger history, its segments and the record's origin (default: the artifact's uri
  only); signed when a ledger key is configured, as the ledger's files are."""
  origin = origin or RecordOrigin(uri=ledger_artifact.uri)
  if _normal_uri(origin.uri) != _normal_uri(ledger_artifact.uri):
    raise ValueError(
      f"the record's origin {origin.uri} is not the artifact's uri {ledger_artifact.uri}"
    )
  ledger_artifact.set_string_custom_property(LEDGER_HASH_PROPERTY, ledger.content_hash())
  ledger_artifact.set_string_custom_property(LEDGER_HISTORY_DIR_PROPERTY, ledger.history_dir or "")
  ledger_artifact.set_string_custom_property(
    LEDGER_SEGMENTS_PROPERTY,
    json.dumps(
      [dataclasses.asdict(RecordedSegment.of(segment)) for segment in ledger.segments],
      separators=(",", ":"),
    ),
  )
  ledger_artifact.set_string_custom_property(LEDGER_RECORD_ORIGIN_PROPERTY, origin.to_json())
  key = signing.configured_key()
  if key is not None:
    ledger_artifact.set_string_custom_property(
      LEDGER_RECORD_SIGNATURE_PROPERTY, signing.sign(_signed_record(ledger_artifact), key)
    )


def verify_record(ledger_artifact: artifact.Artifact, key: bytes) -> None:
  """Raises LedgerError unless the artifact's MLMD record (`record_ledger`) is signed with `key`
  and was written for this artifact (`check_origin`).

  Without the key, editing the record (say, dropping a segment whose file was deleted) cannot be
  told from what the trainer wrote. What no signature shows is a record deleted whole, with its
  artifact: MLMD then knows no such run.
  """
  signature = string_property(ledger_artifact, LEDGER_RECORD_SIGNATURE_PROPERTY)
  where = f"the MLMD record of PrivacyLedger artifact id {ledger_artifact.id}"
  if not signing.is_valid(_signed_record(ledger_artifact), signature, key):
    if signature is None:
      raise LedgerError(
        f"{where} is unsigned (written without a ledger key, or its signature "
        "was removed) and the policy requires signatures: keep the key set from "
        "a pipeline's first run on, or start the pipeline again in a new MLMD "
        "store"
      )
    if not ledger_artifact.has_custom_property(LEDGER_RECORD_ORIGIN_PROPERTY):
      raise LedgerError(
        f"{where} does not match its signature: it names no artifact it was "
        "written for (signed by a dp_tfx before records did, or that part was "
        "removed in MLMD); records are bound to their artifact since: start the "
        "pipeline again in a new MLMD store, or evaluate without require_signature"
      )
    raise LedgerError(
      f"{where} does not match its signature: it was edited in MLMD after the "
      "DPTrainer wrote it, or signed with another ledger key"
    )
  check_origin(ledger_artifact)


def record_origin(ledger_artifact: artifact.Artifact) -> Optional[RecordOrigin]:
  """The origin recorded for the artifact (None: an older dp_tfx's record names none).

  Raises:
    LedgerError: if it is there but malformed.
  """
  text = string_property(ledger_artifact, LEDGER_RECORD_ORIGIN_PROPERTY)
  if text is None:
    return None
  try:
    fields = json.loads(text)
    origin = RecordOrigin(**fields)
  except (ValueError, TypeError, RecursionError):
    raise LedgerError(
      f"the {LEDGER_RECORD_ORIGIN_PROPERTY} MLMD property of PrivacyLedger "
      f"artifact id {ledger_artifact.id} is malformed: {text[:200]}"
    ) from None
  if not isinstance(origin.uri, str) or not all(
    value is None or isinstance(value, str)
    for value in (origin.pipeline, origin.pipeline_run_id, origin.component)
  ):
    raise LedgerError(
      f"the {LEDGER_RECORD_ORIGIN_PROPERTY} MLMD property of PrivacyLedger "
      f"artifact id {ledger_artifact.id} is malformed: {text[:200]}"
    )
  return origin


def check_origin(ledger_artifact: artifact.Artifact, pipeline: Optional[str] = None) -> None:
  """Raises LedgerError if the artifact's record names another artifact (another uri) or, when
  `pipeline` is given, another pipeline: the record was copied onto this artifact in MLMD."""
  origin = record_origin(ledger_artifact)
  if origin is None:
    return
  where = f"the MLMD record of PrivacyLedger artifact id {ledger_artifact.id}"
  if _normal_uri(origin.uri) != _normal_uri(ledger_artifact.uri):
    raise LedgerError(
      f"{where} was written for another artifact ({origin.uri}), not this one "
      f"({ledger_artifact.uri}): it was copied onto it in MLMD, hiding this "
      "artifact's own record"
    )
  if pipeline and origin.pipeline and origin.pipeline != pipeline:
    raise LedgerError(
      f"{where} was written by pipeline {origin.pipeline!r}, not this pipeline "
      f"({pipeline!r}): it was copied into this pipeline's MLMD records"
    )


def record_identity(ledger_artifact: artifact.Artifact) -> str:
  """What tells one run's record from another's: its origin's uri (the artifact's uri for an
  older dp_tfx's record, which names no origin). Two artifacts with the same identity hold one
  run's record twice."""
  origin = record_origin(ledger_artifact)
  return _normal_uri(origin.uri if origin is not None else ledger_artifact.uri)


def _normal_uri(uri: str) -> str:
  return (uri or "").rstrip("/")


def _signed_record(ledger_artifact: artifact.Artifact) -> bytes:
  """What the record's signature covers: its properties as canonical JSON (absent ones null)."""
  record = {name: string_property(ledger_artifact, name) for name in _SIGNED_PROPERTIES}
  return canonical_json(record)


def recorded_history_dir(ledger_artifact: artifact.Artifact) -> Optional[str]:
  """The ledger history recorded for the artifact: None when none was recorded, "" for none."""
  return string_property(ledger_artifact, LEDGER_HISTORY_DIR_PROPERTY)


def recorded_segments(ledger_artifact: artifact.Artifact) -> Optional[List[RecordedSegment]]:
  """The segments recorded for the artifact; None when it has no such record (an artifact
  written before dp_tfx recorded them).

  Raises:
    LedgerError: if the record is there but malformed.
  """
  text = string_property(ledger_artifact, LEDGER_SEGMENTS_PROPERTY)
  if text is None:
    return None
  where = (
    f"the {LEDGER_SEGMENTS_PROPERTY} MLMD property of PrivacyLedger artifact id "
    f"{ledger_artifact.id}"
  )
  try:
    entries = json.loads(text)
  except (ValueError, RecursionError) as error:
    raise LedgerError(f"{where} is not valid JSON: {str(error)[:200]}") from None
  names = {field.name for field in dataclasses.fields(RecordedSegment)}
  if not isinstance(entries, list):
    raise LedgerError(f"{where} is not a list")
  segments = []
  for index, entry in enumerate(entries):
    well_formed = (
      isinstance(entry, dict)
      and set(entry) == names
      and isinstance(entry["segment_id"], str)
      and entry["segment_id"]
      and isinstance(entry["fixed_facts_sha256"], str)
      and isinstance(entry["noisy_steps"], int)
      and not isinstance(entry["noisy_steps"], bool)
      and entry["noisy_steps"] >= 0
    )
    if not well_formed:
      raise LedgerError(f"{where}: entry {index} is malformed: {str(entry)[:200]}")
    segments.append(RecordedSegment(**entry))
  return segments
