"""Privacy accounting for DP-SGD: a thin layer over dp_accounting.

We only build `DpEvent`s from facts (sampling rate, noise multiplier, steps, clipping unit) and ask
dp_accounting's accountants for epsilon; no privacy mathematics is re-derived here.

A DP-SGD step with Poisson sampling rate q, noise std sigma*C and sensitivity s*C is the
Poisson-sampled Gaussian mechanism with noise multiplier sigma/s (add/remove-one neighbours).
Per-example clipping has s = 1. Microbatches of more than one example have s = 2: one example can
move its microbatch's clipped mean from one vector of norm <= C to another.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

PLD = "pld"
RDP = "rdp"
ACCOUNTANTS = (PLD, RDP)

# Discretisation of the PLD accountant: 1e-4 in privacy-loss space keeps the reference values of
# DESIGN.md to 0.1% and takes well under a second for 10^4 steps.
_PLD_VALUE_DISCRETIZATION = 1e-4
# Calibration searches no lower than these sigmas: below ~0.3 the PLD of 10^4 steps needs many GB,
# and no DP-SGD run worth calling private has sigma below 0.05.
_SMALLEST_SIGMA = 0.05
_SMALLEST_PLD_SIGMA = 0.3


def make_accountant(accountant: str = PLD) -> dp_accounting.PrivacyAccountant:
  """Returns a fresh accountant: "pld" (tightest, the default) or "rdp" (a second opinion)."""
  if accountant == PLD:
    return pld_privacy_accountant.PLDAccountant(
        value_discretization_interval=_PLD_VALUE_DISCRETIZATION)
  if accountant == RDP:
    return rdp_privacy_accountant.RdpAccountant()
  raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {accountant!r}")


def steps_for_epochs(epochs: float, dataset_size: int, batch_size: int) -> int:
  """Noisy steps in `epochs` passes: floor(epochs * N / B), at least 1 (the TF Privacy convention)."""
  return max(1, math.floor(epochs * dataset_size / batch_size))


def sensitivity_multiplier(num_microbatches: int | None) -> int:
  """1 for per-example clipping, 2 when microbatches (of possibly several examples) are clipped."""
  return 1 if num_microbatches is None or num_microbatches == 1 else 2


def dp_sgd_event(sampling_rate: float, noise_multiplier: float, steps: int,
                 num_microbatches: int | None = None) -> dp_accounting.DpEvent:
  """The DpEvent of `steps` DP-SGD steps.

  Args:
    sampling_rate: q, the probability that an example is in a step's batch (Poisson sampling).
    noise_multiplier: sigma = noise std / clip norm C; 0 means no noise (not private).
    steps: the number of noisy steps.
    num_microbatches: None/1 for per-example clipping, else the number of microbatches.

  Returns:
    A self-composed Poisson-sampled Gaussian event, or NonPrivateDpEvent when sigma is 0.
  """
  if not 0 < sampling_rate <= 1:
    raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate!r}")
  if noise_multiplier < 0:
    raise ValueError(f"noise_multiplier must be >= 0; got {noise_multiplier!r}")
  if steps < 0 or int(steps) != steps:
    raise ValueError(f"steps must be an integer >= 0; got {steps!r}")
  if steps == 0:
    return dp_accounting.NoOpDpEvent()
  if noise_multiplier == 0:
    return dp_accounting.NonPrivateDpEvent()
  effective = noise_multiplier / sensitivity_multiplier(num_microbatches)
  step = dp_accounting.PoissonSampledDpEvent(sampling_rate,
                                             dp_accounting.GaussianDpEvent(effective))
  return dp_accounting.SelfComposedDpEvent(step, int(steps))


def epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str = PLD) -> float:
  """epsilon(delta) of an event; math.inf for non-private events."""
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1); got {delta!r}")
  acc = make_accountant(accountant)
  if not acc.supports(event):
    raise ValueError(f"the {accountant} accountant cannot account for {event}")
  return float(acc.compose(event).get_epsilon(delta))


def compute_epsilon(*, sampling_rate: float, noise_multiplier: float, steps: int, delta: float,
                    num_microbatches: int | None = None, accountant: str = PLD) -> float:
  """epsilon(delta) of DP-SGD from plain hyperparameters."""
  event = dp_sgd_event(sampling_rate, noise_multiplier, steps, num_microbatches)
  return epsilon_of_event(event, delta, accountant)


def epsilon_curve(make_event: Callable[[int], dp_accounting.DpEvent], step_points: Iterable[int],
                  delta: float, accountant: str = PLD) -> list[tuple[int, float]]:
  """epsilon after each of `step_points` steps, e.g. at every epoch's end, for plots and logs."""
  return [(int(s), epsilon_of_event(make_event(int(s)), delta, accountant)) for s in step_points]


def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sampling_rate: float,
                               steps: int, num_microbatches: int | None = None,
                               accountant: str = PLD) -> float:
  """The smallest sigma whose epsilon(delta) after `steps` steps is at most `target_epsilon`.

  dp_accounting's search guarantees epsilon(result) <= target, and its parameter tolerance keeps
  the result's epsilon within 1% below the target. PLD gets slow (and memory-hungry) for small
  sigma, so the search is bracketed by the RDP answer, which is never smaller (RDP is looser).

  Raises:
    ValueError: for a target that is not positive or other invalid inputs.
  """
  if not target_epsilon > 0 or not math.isfinite(target_epsilon):
    raise ValueError(f"target_epsilon must be a finite number > 0; got {target_epsilon!r}")

  def search(name: str, bracket) -> float:
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(name),
        lambda sigma: dp_sgd_event(sampling_rate, sigma, steps, num_microbatches),
        target_epsilon, delta, bracket_interval=bracket, tol=1e-5))

  rdp_sigma = search(RDP, dp_accounting.LowerEndpointAndGuess(_SMALLEST_SIGMA, 1.0))
  if accountant == RDP:
    return rdp_sigma
  if accountant != PLD:
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {accountant!r}")
  # PLD's sigma is a little below RDP's: step the lower end down until it brackets the target.
  upper = rdp_sigma
  if upper <= _SMALLEST_PLD_SIGMA:
    return upper  # safe: PLD's epsilon at RDP's sigma is no larger than RDP's
  lower = max(_SMALLEST_PLD_SIGMA, 0.85 * upper)
  while lower < upper and compute_epsilon(
      sampling_rate=sampling_rate, noise_multiplier=lower, steps=steps, delta=delta,
      num_microbatches=num_microbatches) <= target_epsilon:
    if lower == _SMALLEST_PLD_SIGMA:
      return lower
    upper, lower = lower, max(_SMALLEST_PLD_SIGMA, 0.85 * lower)
  return search(PLD, dp_accounting.ExplicitBracketInterval(lower, upper))


def compose(events: Sequence[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
  """Sequential composition: runs on the same data add up (every step counts)."""
  return dp_accounting.ComposedDpEvent(list(events))
