"""How long a reservation holds: the heartbeat of a running fit, and when its file looks killed.

Before its policy pre-check, a fit reserves the noisy steps it is about to run, and every
pre-check counts unfinished reservations as spent. A run killed mid-fit never finishes its
segment, so its reservation must lapse on its own: a running fit rewrites its segment every
HEARTBEAT_SECONDS, and a segment file the storage last modified over RESERVATION_STALE_SECONDS
ago is a killed run's. The age is judged by the storage's modification time, never by a
writer's clock; where that time is missing or suspect the reservation holds (fail closed) until
its run finishes or `release_reservation` finishes it by hand. The messages that refuse a run
because of a reservation say which of these applies (`_reservation_note`).
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # for annotations only: segment.py imports this module
  from dp_tfx.ledger.segment import Segment

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
