"""The ledger history: a directory where every run on a data source records its own segments.

Runs record into a history so that concurrent runs never lose each other's steps: each segment
is a file of its own, written only by the run that created it, and the history's total is the
composition of every segment file in it. Whoever reads a history (a new run, the
PrivacyEvaluator, `dp-tfx report`) also checks that nothing recorded in it dropped out: a segment
deleted, renamed, changed or shortened after another run saw it (`check_still_there`, for a
later segment's chain in `check_chain`, a snapshot in `_check_still_recorded`, and MLMD's record
in dp_tfx.components.earlier_runs).

A format-1 ledger found in a history (the old one-file layout) is read as LedgerFacts (facts.py),
not as a PrivacyLedger: PrivacyLedger writes into the history, so this module must not import it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Union

from dp_tfx import files
from dp_tfx.ledger.envelope import _document, _verified_body
from dp_tfx.ledger.errors import LedgerError, _check
from dp_tfx.ledger.facts import FORMAT_VERSION, LedgerFacts
from dp_tfx.ledger.segment import Segment, _order, _segment_from_dict
from dp_tfx.version import __version__

SEGMENT_KIND = "segment"
# The temporary name files.write_bytes gives a record while writing it: ".NAME-<32 hex digits>".
_WRITE_IN_FLIGHT = re.compile(r"\.(.+\.json)-[0-9a-f]{32}")
_STALE_TEMPORARY_SECONDS = 300


def check_still_there(
  segment_id: str,
  noisy_steps: int,
  now: Optional[Segment],
  where: str,
  seen_by: str,
  fixed_facts: Union[dict, str, None] = None,
  missing_advice: str = "",
) -> None:
  """Raises LedgerError unless segment `segment_id`, as `seen_by` saw it, is still in `where`
  (`now`: the segment there by that id, None where there is none) with the same fixed facts and
  at least its `noisy_steps`: a record deleted, changed or shortened would drop steps out of the
  total, whoever saw it (a later segment, a snapshot, MLMD).

  Args:
    seen_by: who saw it, as the messages say it: "segment S saw when it started".
    fixed_facts: its fixed facts as seen (`Segment.fixed_facts()`; the message names those that
      changed), or only their hash (`Segment.fixed_facts_hash()`, as MLMD records them), or None
      where they were not kept (a segment's predecessors).
    missing_advice: what else brings it back where it is missing, besides copying its file back.
  """
  if now is None:
    raise LedgerError(
      f"segment {segment_id}, which {seen_by}, is missing from {where}: its steps "
      f"would drop out of the total; copy its segment file back into the history{missing_advice}"
    )
  restore = "restore the segment file as that run wrote it (e.g. from a backup)"
  if isinstance(fixed_facts, dict):
    facts = now.fixed_facts()
    changed = sorted(k for k in {*fixed_facts, *facts} if fixed_facts.get(k) != facts.get(k))
    which = f" ({', '.join(changed)})"
  else:
    changed = fixed_facts is not None and now.fixed_facts_hash() != fixed_facts
    which = ""
  _check(
    not changed,
    f"segment {segment_id} in {where} differs from the facts {seen_by}{which}: it was changed; "
    f"{restore}",
  )
  _check(
    now.noisy_steps >= noisy_steps,
    f"segment {segment_id} in {where} records {now.noisy_steps} noisy steps, fewer than the "
    f"{noisy_steps} {seen_by}: it was shortened; {restore}",
  )


def check_chain(segments: list, history_dir: Optional[str]) -> None:
  """Raises LedgerError unless every segment that a segment of the history saw when it started
  (its `predecessors`) is still there, with at least the steps it had then: a segment deleted or
  shortened after a later run opened the history is found without any other record of it.
  (Checked after the snapshot's and MLMD's checks, whose messages say more where they apply.)"""
  by_id = {segment.segment_id: segment for segment in segments}
  for segment in segments:
    for seen in segment.predecessors or ():
      check_still_there(
        seen["segment_id"],
        seen["noisy_steps"],
        by_id.get(seen["segment_id"]),
        f"the ledger history {history_dir}",
        f"segment {segment.segment_id} saw when it started",
      )


def _check_still_recorded(recorded_segments, current: dict, history_dir: str) -> None:
  """Raises LedgerError unless every recorded segment is still in the history (`current`, by
  segment id) with the same facts and at least as many steps."""
  for recorded in recorded_segments:
    check_still_there(
      recorded.segment_id,
      recorded.noisy_steps,
      current.get(recorded.segment_id),
      f"the ledger history {history_dir}",
      "this ledger recorded before",
      recorded.fixed_facts(),
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
      ledger = LedgerFacts._from_body(body)
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
