"""The heartbeat of a running fit: its segment rewritten on a timer, so its reservation holds.

A thread of its own, because a fit's steps may take longer than the staleness limit (a first
compilation, a long epoch end, a slow step): a heartbeat tied to steps would let a live run's
reservation lapse. See reservations.py for how long a reservation holds without one.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # for annotations only: privacy_ledger.py imports this module
  from dp_tfx.ledger.privacy_ledger import PrivacyLedger

_LOG = logging.getLogger(__name__)


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
