"""A fit's part in the privacy budget: checked before it trains, reserved while it trains,
finished however it ends.

DPModel.fit (dp_tfx.keras) calls these on the chief, in this order: `refuse_before_training`
once the plan and the steps are known; `reservation` around the steps, which writes this fit's
segment with the steps it is about to take (other runs' pre-checks count them as spent), keeps
it alive with a heartbeat and finishes it when the fit is trained, refused or raises;
`check_with_reservation` once the reservation is written, so that of two runs checking at once
the later sees the earlier. The workers' handshake around them is dp_tfx.workers'.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from dp_tfx.ledger import PrivacyLedger
from dp_tfx.plan import TrainingPlan
from dp_tfx.poisson_batches import PoissonBatchStream
from dp_tfx.policy import PrivacyPolicy, refuse_unless_blessable


def refuse_before_training(
  ledger: PrivacyLedger,
  policy: Optional[PrivacyPolicy],
  plan: TrainingPlan,
  steps: int,
  seeded: bool,
) -> None:
  """Refuses a fit of `steps` that the policy could never bless, counting the runs recorded or
  reserved since the ledger was opened; a refused fit leaves nothing in the ledger.

  Raises:
    PolicyRefusal: with every reason.
  """
  if policy is None:
    return
  ledger.refresh()
  refuse_unless_blessable(policy, ledger.if_trained(plan, steps, seeded))


@contextlib.contextmanager
def reservation(ledger: PrivacyLedger, plan: TrainingPlan, steps: int, seeded: bool) -> Iterator:
  """This fit's reservation of `steps`: until the block ends other runs' pre-checks count them
  as spent. Inside, the segment is rewritten every HEARTBEAT_SECONDS, so the reservation holds;
  a killed run's lapses RESERVATION_STALE_SECONDS after its last write. At the end, however it
  comes, the segment is finished: from then on only the steps taken count."""
  ledger.start_segment(plan, seeded=seeded, steps=steps)
  heartbeat = None
  try:
    heartbeat = ledger.start_heartbeat()
    yield
  finally:
    if heartbeat is not None:
      heartbeat.stop()
    ledger.finish_segment()


def check_with_reservation(
  ledger: PrivacyLedger,
  policy: Optional[PrivacyPolicy],
  stream: Optional[PoissonBatchStream],
  first_step: int,
) -> None:
  """The checks again with this fit's reservation written (see PrivacyLedger.with_reservations):
  of two runs checking at once, the later counts the earlier's reservation; of two runs starting
  on the same Poisson batches (`stream`) at once, at least one sees the other's segment and stops
  before a step.

  Raises:
    PolicyRefusal: if the policy could never bless the runs with this one's reservation.
    ValueError: if another run took the batches' steps from `first_step` on.
  """
  if policy is not None or stream is not None:
    ledger.refresh()
  if policy is not None:
    refuse_unless_blessable(policy, ledger.with_reservations())
  if stream is not None:
    stream.next_step(ledger, own_segment=ledger.current_segment, expected=first_step)
