"""Releasing a killed run's reservation by hand (`dp-tfx release-reservation`).

A reservation lapses on its own once its segment file is stale, judged by the storage's
modification time (reservations.py). Where the storage gives none, or a suspect one, it holds
until its run finishes, which a killed run never does: this finishes its segment instead, as the
run would have, and refuses while the run may still be alive.
"""

from __future__ import annotations

import os
import time

from dp_tfx import files, signing
from dp_tfx.ledger.envelope import _check_key_kept
from dp_tfx.ledger.errors import LedgerError, _check
from dp_tfx.ledger.history import LedgerHistory, _segment_document
from dp_tfx.ledger.privacy_ledger import PrivacyLedger, _check_writable
from dp_tfx.ledger.reservations import HEARTBEAT_SECONDS, _age, _may_be_running
from dp_tfx.ledger.segment import Segment, _now


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
