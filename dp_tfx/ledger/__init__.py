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

The package, one idea per module (each imports only those above it):

  errors.py          LedgerError, LedgerIntegrityError: what every check raises.
  digests.py         dataset_fingerprint, directory_digest: what ties a ledger to data and model.
  envelope.py        a record's document: its body, content hash and signature.
  reservations.py    how long a reservation holds: the heartbeat interval, staleness, notes.
  segment.py         Segment: one fit's facts and steps, validated as read.
  facts.py           LedgerFacts: what a ledger says (its segments composed, its body).
  history.py         LedgerHistory: the directory of segment files, and its chain checks.
  heartbeat.py       Heartbeat: the thread that keeps a running fit's reservation alive.
  privacy_ledger.py  PrivacyLedger: a ledger as a run records it, in a history or one file.
  release.py         release_reservation: finishing a killed run's segment by hand.

Everything other modules use is imported from here (`from dp_tfx.ledger import PrivacyLedger`).
A test that monkeypatches a module attribute patches the module that reads it: a patch here
would change nothing.
"""

from dp_tfx.ledger.digests import dataset_fingerprint, directory_digest
from dp_tfx.ledger.envelope import _hash_body as _hash_body  # tests recompute content hashes
from dp_tfx.ledger.errors import LedgerError, LedgerIntegrityError
from dp_tfx.ledger.facts import EXAMPLE, FORMAT_VERSION, SEQUENCE, LedgerFacts
from dp_tfx.ledger.heartbeat import Heartbeat
from dp_tfx.ledger.history import (
  SEGMENT_KIND,
  LedgerHistory,
  check_chain,
  check_still_there,
  read_history,
)
from dp_tfx.ledger.privacy_ledger import LEDGER_FILE_NAME, PrivacyLedger
from dp_tfx.ledger.release import release_reservation
from dp_tfx.ledger.reservations import (
  HEARTBEAT_SECONDS,
  MODIFIED_TIME_SLACK_SECONDS,
  RESERVATION_STALE_SECONDS,
  format_time,
)
from dp_tfx.ledger.segment import SEGMENT_PREFIX, Segment, new_run_id

__all__ = [
  "EXAMPLE",
  "FORMAT_VERSION",
  "HEARTBEAT_SECONDS",
  "LEDGER_FILE_NAME",
  "MODIFIED_TIME_SLACK_SECONDS",
  "RESERVATION_STALE_SECONDS",
  "SEGMENT_KIND",
  "SEGMENT_PREFIX",
  "SEQUENCE",
  "Heartbeat",
  "LedgerError",
  "LedgerFacts",
  "LedgerHistory",
  "LedgerIntegrityError",
  "PrivacyLedger",
  "Segment",
  "check_chain",
  "check_still_there",
  "dataset_fingerprint",
  "directory_digest",
  "format_time",
  "new_run_id",
  "read_history",
  "release_reservation",
]
