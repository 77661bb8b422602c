"""Calibration: the smallest noise multiplier whose epsilon meets a target.

The inverse of dp_tfx.accounting: dp_accounting's `calibrate_dp_mechanism` does the search; what
is ours is where it may search (the noise multipliers DPConfig accepts, and where the PLD
accountant is run at all) and the messages that say which targets are reachable.
"""

from __future__ import annotations

import math
import numbers

import dp_accounting

from dp_tfx.accounting import (
  ACCOUNTANTS,
  NUMERIC_FAILURES,
  PLD,
  PLD_MAX_RDP_EPSILON,
  PLD_MIN_EFFECTIVE_NOISE,
  RDP,
  compose,
  dp_sgd_event,
  epsilon_of_event,
  make_accountant,
  sensitivity_multiplier,
)
from dp_tfx.checks import is_whole_number
from dp_tfx.config import MAX_NOISE_MULTIPLIER, MAX_STEPS, MIN_NOISE_MULTIPLIER


class CalibrationError(ValueError):
  """No noise multiplier in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER] meets the target."""


def calibrate_noise_multiplier(
  *,
  target_epsilon: float,
  delta: float,
  sampling_rate: float,
  steps: int,
  num_microbatches: int | None = None,
  accountant: str = PLD,
  spent: dp_accounting.DpEvent | None = None,
) -> float:
  """The smallest sigma whose epsilon(delta) after `steps` steps is at most `target_epsilon`.

  With `spent` (what earlier runs on the data already cost, e.g. a ledger history's event), the
  target is the total's: `spent` composed with these steps stays within it.

  sigma is searched in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER] (what DPConfig accepts).
  dp_accounting's search guarantees epsilon(result) <= target, and its parameter tolerance keeps
  the result's epsilon within 1% below the target. PLD gets slow (and memory-hungry) for small
  sigma, so its search is bracketed by the RDP answer and kept where the PLD accountant is run
  (see `epsilon_result`): for a target so large (epsilon near 100) that the smallest such sigma
  already meets it, that sigma is the answer, its epsilon below the target.

  Raises:
    CalibrationError (a ValueError): when no sigma in that range meets the target; the message
      says which targets are achievable for these facts.
    ValueError: for a target that is not a finite number > 0 or other invalid inputs.
  """
  if (
    isinstance(target_epsilon, bool)
    or not isinstance(target_epsilon, numbers.Real)
    or not (math.isfinite(target_epsilon) and target_epsilon > 0)
  ):
    raise ValueError(f"target_epsilon must be a finite number > 0; got {target_epsilon!r}")
  if accountant not in ACCOUNTANTS:
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {accountant!r}")
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1); got {delta!r}")
  if not is_whole_number(steps) or not 1 <= steps <= MAX_STEPS:
    raise ValueError(f"steps must be an integer in [1, {MAX_STEPS:,}]; got {steps!r}")
  dp_sgd_event(sampling_rate, 1.0, steps, num_microbatches)  # validates the facts

  def event(sigma: float) -> dp_accounting.DpEvent:
    this_run = dp_sgd_event(sampling_rate, sigma, steps, num_microbatches)
    return this_run if spent is None else compose([spent, this_run])

  def epsilon(sigma: float, name: str) -> float:
    return epsilon_of_event(event(sigma), delta, name)

  def search(name: str, lower: float, upper: float, target: float) -> float:
    try:
      return float(
        dp_accounting.calibrate_dp_mechanism(
          lambda: make_accountant(name),
          event,
          target,
          delta,
          bracket_interval=dp_accounting.ExplicitBracketInterval(lower, upper),
          tol=1e-5,
        )
      )
    except NUMERIC_FAILURES + (dp_accounting.NoBracketIntervalFoundError,) as error:
      raise CalibrationError(
        f"calibrating sigma for target_epsilon {target_epsilon:g} failed in the {name} "
        f"accountant ({type(error).__name__}); give noise_multiplier instead"
      ) from None

  most = epsilon(MIN_NOISE_MULTIPLIER, RDP)  # the least noise accepted: an upper end
  least = epsilon(MAX_NOISE_MULTIPLIER, accountant)  # the most noise accepted: the lower end
  facts = (
    f"{steps} steps at sampling rate {sampling_rate:.4g}, delta {delta:g}"
    + (", microbatches (sensitivity 2C)" if sensitivity_multiplier(num_microbatches) == 2 else "")
    + (", after what the ledger already records" if spent is not None else "")
  )
  if target_epsilon < least:
    raise CalibrationError(
      f"target_epsilon {target_epsilon:g} is not reachable: even noise multiplier "
      f"{MAX_NOISE_MULTIPLIER:g} (the largest accepted) gives epsilon {least:.4g} ({accountant}) "
      f"for {facts}; achievable targets are >= {least:.4g}"
    )
  if target_epsilon >= most:
    raise CalibrationError(
      f"target_epsilon {target_epsilon:g} is too large to calibrate: noise multiplier "
      f"{MIN_NOISE_MULTIPLIER:g} (the smallest accepted) already gives epsilon {most:.4g} (rdp) "
      f"for {facts}; achievable targets are in [{least:.4g}, {most:.4g})"
    )

  rdp_least = epsilon(MAX_NOISE_MULTIPLIER, RDP)
  # Only PLD (tighter) reaches targets below RDP's floor: its search starts from sigma max.
  rdp_sigma = (
    MAX_NOISE_MULTIPLIER
    if target_epsilon < rdp_least
    else search(RDP, MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER, target_epsilon)
  )
  if accountant == RDP:
    return rdp_sigma
  # The PLD accountant runs only for sigma >= floor (see epsilon_result): keep the search there.
  floor = PLD_MIN_EFFECTIVE_NOISE * sensitivity_multiplier(num_microbatches)
  if epsilon(floor, RDP) > PLD_MAX_RDP_EPSILON:
    floor = search(RDP, floor, MAX_NOISE_MULTIPLIER, PLD_MAX_RDP_EPSILON)
  floor = max(floor, MIN_NOISE_MULTIPLIER)
  if rdp_sigma < floor:  # the target lies where the PLD accountant is not run
    if epsilon(floor, PLD) <= target_epsilon:
      return floor  # meets the target; a smaller sigma could not be accounted with PLD
    raise CalibrationError(
      f"target_epsilon {target_epsilon:g} is too large for the pld accountant, which is run "
      f"only where RDP bounds epsilon by {PLD_MAX_RDP_EPSILON:g}; choose a smaller target or "
      f"the rdp accountant"
    )
  upper = rdp_sigma
  if epsilon(upper, PLD) > target_epsilon:  # PLD's discretisation can be above RDP: go up
    upper = MAX_NOISE_MULTIPLIER
    lower = rdp_sigma
  else:  # PLD's sigma is a little below RDP's: step the lower end down until it brackets
    lower = max(floor, 0.85 * upper)
    while lower < upper and epsilon(lower, PLD) <= target_epsilon:
      if lower == floor:
        return lower
      upper, lower = lower, max(floor, 0.85 * lower)
    if lower >= upper:
      return upper
  return search(PLD, lower, upper, target_epsilon)
