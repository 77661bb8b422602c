"""Privacy accounting for DP-SGD: a thin layer over dp_accounting.

We only build `DpEvent`s from facts (sampling rate, noise multiplier, steps, clipping unit) and ask
dp_accounting's accountants for epsilon; no privacy mathematics is re-derived here.

A DP-SGD step with Poisson sampling rate q, noise std sigma*C and sensitivity s*C is the
Poisson-sampled Gaussian mechanism with noise multiplier sigma/s (add/remove-one neighbours).
Per-example clipping has s = 1. Microbatches of more than one example have s = 2: one example can
move its microbatch's clipped mean from one vector of norm <= C to another.

Failing closed: epsilon is an upper bound or infinite, never a number the accountant could not
stand behind. Invalid facts (a rate outside (0, 1], a negative or NaN noise multiplier, a
fractional step count) raise ValueError; facts that are valid but beyond what an accountant can
compute give epsilon = inf with a reason (`epsilon_result`):

- an exception while the accountant composes or converts: ArithmeticError (OverflowError,
  ZeroDivisionError, FloatingPointError), MemoryError, or a ValueError raised inside dp_accounting
  or numpy (e.g. "Maximum allowed size exceeded"); also a NaN or negative result;
- RDP: a negative Renyi divergence at any order (numerical instability, which dp_accounting would
  turn into epsilon = 0);
- PLD: facts where the PLD accountant would need many GB or minutes, so it is not run: more than
  `MAX_STEPS` noisy steps, a noise multiplier per unit of sensitivity below
  `PLD_MIN_EFFECTIVE_NOISE`, or an RDP bound above `PLD_MAX_RDP_EPSILON` (the RDP bound is then
  in the reason; ask for `accountant="rdp"` to get it as the answer).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
from typing import Callable, Iterable, Optional, Sequence

import dp_accounting
import numpy as np
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from dp_tfx.checks import is_whole_number
from dp_tfx.config import MAX_STEPS


class _NonConvergingOrderFilter(logging.Filter):
  """Drops dp_accounting's "_compute_log_a_frac failed to converge ... Excluding this order"
  warnings, 4-8 lines per calibration that nobody can act on: the RDP accountant leaves such an
  order out of its minimum over orders, which can only make epsilon larger, never smaller."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Excluding this order from the epsilon computation" not in record.getMessage()


logging.getLogger("absl").addFilter(_NonConvergingOrderFilter())

PLD = "pld"
RDP = "rdp"
ACCOUNTANTS = (PLD, RDP)

# Discretisation of the PLD accountant: 1e-4 in privacy-loss space keeps the reference values
# (docs/architecture.md, "Accounting reference values") to 0.1% and takes well under a second for
# 10^4 steps.
_PLD_VALUE_DISCRETIZATION = 1e-4
# Where the PLD accountant is run at all. Its memory and time grow with 1/sigma^2 and with epsilon
# (the width of the privacy-loss distribution): measured here, sigma 0.1 with q = 0.05 and 1000
# steps needs > 5 GB, sigma 0.01 with 40 steps about 20 GB, and q = 1, sigma 300, 10^7 steps
# (epsilon 100) 1.3 GB and 40 s. Beyond these limits the PLD answer is inf (with the RDP bound in
# the reason): an epsilon above 100 means no meaningful privacy whatever its exact value.
PLD_MIN_EFFECTIVE_NOISE = 0.2  # sigma / sensitivity multiplier
# Distinct (q, sigma) groups the PLD accountant composes exactly. Each costs a one-step PLD of its
# own (~0.2 s) and a composition: 50 runs of different N took 18 s. Beyond, the PLD answer is that
# of a conservative merge into this many groups (`merged_conservatively`), never lower.
PLD_MAX_GROUPS = 8
PLD_MAX_RDP_EPSILON = 100.0


@dataclasses.dataclass(frozen=True)
class EpsilonResult:
  """epsilon(delta) of an event, and why it is infinite when it is (None when finite)."""

  epsilon: float
  reason: Optional[str] = None

  @property
  def finite(self) -> bool:
    return math.isfinite(self.epsilon)


def make_accountant(accountant: str = PLD) -> dp_accounting.PrivacyAccountant:
  """Returns a fresh accountant: "pld" (tightest, the default) or "rdp" (a second opinion)."""
  if accountant == PLD:
    return pld_privacy_accountant.PLDAccountant(
      value_discretization_interval=_PLD_VALUE_DISCRETIZATION
    )
  if accountant == RDP:
    return rdp_privacy_accountant.RdpAccountant()
  raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {accountant!r}")


def steps_for_epochs(epochs: float, dataset_size: int, batch_size: int) -> int:
  """Noisy steps in `epochs` passes: floor(epochs * N / B), at least 1 (the TF Privacy convention).

  Raises:
    ValueError: if epochs is not a finite number > 0 or epochs * N / B is not finite.
  """
  if (
    isinstance(epochs, bool)
    or not isinstance(epochs, numbers.Real)
    or not (math.isfinite(epochs) and epochs > 0)
  ):
    raise ValueError(f"epochs must be a finite number > 0; got {epochs!r}")
  passes = epochs * dataset_size / batch_size
  if not math.isfinite(passes):
    raise ValueError(
      f"epochs={epochs!r} on {dataset_size} examples at batch size {batch_size} "
      f"gives more steps than can be counted"
    )
  return max(1, math.floor(passes))


def sensitivity_multiplier(num_microbatches: int | None) -> int:
  """1 for per-example clipping, 2 when microbatches (of possibly several examples) are clipped."""
  return 1 if num_microbatches is None or num_microbatches == 1 else 2


def dp_sgd_event(
  sampling_rate: float, noise_multiplier: float, steps: int, num_microbatches: int | None = None
) -> dp_accounting.DpEvent:
  """The DpEvent of `steps` DP-SGD steps.

  Args:
    sampling_rate: q, the probability that an example is in a step's batch (Poisson sampling).
    noise_multiplier: sigma = noise std / clip norm C; 0 means no noise (not private).
    steps: the number of noisy steps.
    num_microbatches: None/1 for per-example clipping, else the number of microbatches.

  Returns:
    A self-composed Poisson-sampled Gaussian event, or NonPrivateDpEvent when sigma is 0. Facts
    beyond what the accountants handle (e.g. 10^20 steps) still make an event; its epsilon is inf.

  Raises:
    ValueError: for a rate outside (0, 1], a negative or NaN sigma, or steps that are not a whole
      number >= 0.
  """
  if not 0 < sampling_rate <= 1:
    raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate!r}")
  if not noise_multiplier >= 0:  # NaN fails too
    raise ValueError(f"noise_multiplier must be >= 0; got {noise_multiplier!r}")
  if not is_whole_number(steps) or steps < 0:
    raise ValueError(f"steps must be an integer >= 0; got {steps!r}")
  if steps == 0:
    return dp_accounting.NoOpDpEvent()
  if noise_multiplier == 0:
    return dp_accounting.NonPrivateDpEvent()
  effective = noise_multiplier / sensitivity_multiplier(num_microbatches)
  step = dp_accounting.PoissonSampledDpEvent(
    sampling_rate, dp_accounting.GaussianDpEvent(effective)
  )
  return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _gaussian_facts(event: dp_accounting.DpEvent, count: int = 1) -> tuple[float, int, bool]:
  """(smallest Gaussian noise multiplier, Gaussian releases, non-private?) of an event tree."""
  if isinstance(event, dp_accounting.NonPrivateDpEvent):
    return math.inf, 0, True
  if isinstance(event, dp_accounting.GaussianDpEvent):
    return event.noise_multiplier, count, False
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    return _gaussian_facts(event.event, count * event.count)
  if isinstance(event, dp_accounting.PoissonSampledDpEvent):
    return _gaussian_facts(event.event, count)
  if isinstance(event, dp_accounting.ComposedDpEvent):
    smallest, total, non_private = math.inf, 0, False
    for part in event.events:
      part_sigma, part_count, part_non_private = _gaussian_facts(part, count)
      smallest, total = min(smallest, part_sigma), total + part_count
      non_private = non_private or part_non_private
    return smallest, total, non_private
  return math.inf, 0, False


# Raised by dp_accounting / numpy / scipy when facts are beyond what they can compute.
NUMERIC_FAILURES = (ArithmeticError, MemoryError, ValueError)


def _run_accountant(event: dp_accounting.DpEvent, delta: float, accountant: str) -> EpsilonResult:
  acc = make_accountant(accountant)
  if not acc.supports(event):
    raise ValueError(f"the {accountant} accountant cannot account for {event}")
  try:
    acc.compose(event)
    if accountant == RDP:
      rdp = np.asarray(getattr(acc, "_rdp", []), dtype=float)
      if np.any(np.isnan(rdp)) or np.any(rdp < 0):
        return EpsilonResult(
          math.inf,
          "the RDP accountant is numerically unstable for these facts "
          "(a negative or NaN Renyi divergence)",
        )
    epsilon = float(acc.get_epsilon(delta))
  except NUMERIC_FAILURES as error:
    first_line = (str(error).splitlines() or [""])[0][:160]
    return EpsilonResult(
      math.inf,
      f"the {accountant} accountant failed on these facts ({type(error).__name__}: {first_line})",
    )
  if math.isnan(epsilon) or epsilon < 0:
    return EpsilonResult(math.inf, f"the {accountant} accountant returned epsilon = {epsilon}")
  if math.isinf(epsilon):
    return EpsilonResult(
      math.inf,
      f"the {accountant} accountant gives no finite epsilon at delta = {delta:g} for these facts",
    )
  return EpsilonResult(epsilon)


def epsilon_result(
  event: dp_accounting.DpEvent, delta: float, accountant: str = PLD
) -> EpsilonResult:
  """epsilon(delta) of an event, inf (with the reason) where it cannot be bounded.

  Never raises for valid arguments and never returns less than the accountant's bound: numeric
  failures give inf (see the module docstring for which).

  Raises:
    ValueError: for delta outside (0, 1), an unknown accountant, or an event it cannot account.
  """
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1); got {delta!r}")
  if accountant not in ACCOUNTANTS:
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}; got {accountant!r}")
  smallest_sigma, steps, non_private = _gaussian_facts(event)
  if non_private:
    return EpsilonResult(
      math.inf, "the noise multiplier is 0: training without noise is not private"
    )
  rdp = _run_accountant(event, delta, RDP)
  if accountant == RDP:
    return rdp
  if steps > MAX_STEPS:
    return EpsilonResult(
      math.inf, f"{steps} noisy steps are more than the {MAX_STEPS:,} the PLD accountant is run for"
    )
  if smallest_sigma < PLD_MIN_EFFECTIVE_NOISE:
    return EpsilonResult(
      math.inf,
      f"a noise multiplier per unit of sensitivity of "
      f"{smallest_sigma:.3g} is below {PLD_MIN_EFFECTIVE_NOISE}, where the PLD "
      f"accountant would need too much memory; "
      + (f"RDP bounds epsilon by {rdp.epsilon:.4g}" if rdp.finite else f"RDP: {rdp.reason}"),
    )
  if not rdp.finite:
    return EpsilonResult(math.inf, f"PLD not run: {rdp.reason}")
  if rdp.epsilon > PLD_MAX_RDP_EPSILON:
    return EpsilonResult(
      math.inf,
      f"RDP bounds epsilon by {rdp.epsilon:.4g}, above the "
      f"{PLD_MAX_RDP_EPSILON:g} up to which the PLD accountant is run (such an "
      "epsilon means no meaningful privacy; the rdp accountant gives the bound)",
    )
  return _run_accountant(merged_conservatively(event), delta, PLD)


def _subsampled_gaussian_parts(event: dp_accounting.DpEvent) -> Optional[list]:
  """[(q, noise multiplier, steps)] of a composition of self-composed Poisson-sampled Gaussian
  steps (what `dp_sgd_event` and `compose` build); None for any other event."""
  parts = event.events if isinstance(event, dp_accounting.ComposedDpEvent) else [event]
  found = []
  for part in parts:
    if isinstance(part, dp_accounting.NoOpDpEvent):
      continue
    if not (
      isinstance(part, dp_accounting.SelfComposedDpEvent)
      and isinstance(part.event, dp_accounting.PoissonSampledDpEvent)
      and isinstance(part.event.event, dp_accounting.GaussianDpEvent)
      and part.event.event.noise_multiplier > 0
      and part.event.sampling_probability > 0
    ):
      return None
    found.append((part.event.sampling_probability, part.event.event.noise_multiplier, part.count))
  return found


def merged_conservatively(
  event: dp_accounting.DpEvent, max_groups: int = PLD_MAX_GROUPS
) -> dp_accounting.DpEvent:
  """`event` itself when it has at most `max_groups` (q, sigma) groups; else an event of that
  many groups that dominates it, so that its epsilon is never lower.

  The groups, ordered by q / sigma, are cut into runs of about equal length; each run becomes
  its steps summed at its largest q and smallest sigma. A Poisson-sampled Gaussian step only
  loses privacy as q grows or sigma shrinks, and a composition of dominating mechanisms
  dominates the composition. Written here because dp_accounting offers no such merge.
  """
  parts = _subsampled_gaussian_parts(event)
  if parts is None or len(parts) <= max_groups:
    return event
  ordered = sorted(parts, key=lambda part: part[0] / part[1])
  merged = []
  for run in np.array_split(np.arange(len(ordered)), max_groups):
    members = [ordered[index] for index in run]
    merged.append(
      dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
          max(q for q, _, _ in members),
          dp_accounting.GaussianDpEvent(min(sigma for _, sigma, _ in members)),
        ),
        sum(steps for _, _, steps in members),
      )
    )
  return dp_accounting.ComposedDpEvent(merged)


def epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str = PLD) -> float:
  """epsilon(delta) of an event; math.inf for non-private events and where it cannot be bounded."""
  return epsilon_result(event, delta, accountant).epsilon


def compute_epsilon_result(
  *,
  sampling_rate: float,
  noise_multiplier: float,
  steps: int,
  delta: float,
  num_microbatches: int | None = None,
  accountant: str = PLD,
) -> EpsilonResult:
  """epsilon(delta) of DP-SGD from plain facts, with the reason when it is infinite."""
  event = dp_sgd_event(sampling_rate, noise_multiplier, steps, num_microbatches)
  return epsilon_result(event, delta, accountant)


def compute_epsilon(
  *,
  sampling_rate: float,
  noise_multiplier: float,
  steps: int,
  delta: float,
  num_microbatches: int | None = None,
  accountant: str = PLD,
) -> float:
  """epsilon(delta) of DP-SGD from plain facts; inf where it cannot be bounded (never lower)."""
  return compute_epsilon_result(
    sampling_rate=sampling_rate,
    noise_multiplier=noise_multiplier,
    steps=steps,
    delta=delta,
    num_microbatches=num_microbatches,
    accountant=accountant,
  ).epsilon


def epsilon_curve(
  make_event: Callable[[int], dp_accounting.DpEvent],
  step_points: Iterable[int],
  delta: float,
  accountant: str = PLD,
) -> list[tuple[int, float]]:
  """epsilon after each of `step_points` steps, e.g. at every epoch's end, for plots and logs.

  With PLD, when the last point's epsilon is finite, every earlier point (fewer steps of the same
  steps) lies inside where the PLD accountant is run too, and is computed from the accountant's
  own one-step PLDs built once per (q, sigma) (`_pld_epsilon`): building them is most of a
  point's cost, and a 20-point curve took 4 s where it now takes well under one. Beyond
  PLD_MAX_GROUPS groups the earlier points are the RDP accountant's bound (one-step RDPs built
  once per group), the last the decision's PLD epsilon: a 50-run history's curve took 76 s by PLD.
  """
  points = sorted({int(s) for s in step_points})
  if not points:
    return []
  last = epsilon_result(make_event(points[-1]), delta, accountant)
  if accountant == PLD and last.finite:
    parts = _subsampled_gaussian_parts(make_event(points[-1]))
    # Many groups: the earlier points by RDP, from one-step RDPs built once per (q, sigma), an
    # upper bound as the PLD's is (a PLD per point would cost seconds each).
    earlier = _rdp_epsilon if parts is not None and len(parts) > PLD_MAX_GROUPS else _pld_epsilon
    fast = [earlier(make_event(s), delta) for s in points[:-1]]
    if None not in fast:
      return list(zip(points, fast + [last.epsilon]))
  return [(s, epsilon_of_event(make_event(s), delta, accountant)) for s in points[:-1]] + [
    (points[-1], last.epsilon)
  ]


@functools.lru_cache(maxsize=64)
def _one_step_pld(sampling_rate: float, noise_multiplier: float):
  """The PLD of one Poisson-sampled Gaussian step, built exactly as dp_accounting's PLD accountant
  builds it for a PoissonSampledDpEvent(GaussianDpEvent) (add-or-remove-one neighbours)."""
  return privacy_loss_distribution.from_gaussian_mechanism(
    standard_deviation=noise_multiplier,
    value_discretization_interval=_PLD_VALUE_DISCRETIZATION,
    sampling_prob=sampling_rate,
  )


@functools.lru_cache(maxsize=256)
def _one_step_rdp(sampling_rate: float, noise_multiplier: float) -> np.ndarray:
  """The RDP accountant's Renyi divergences (at its orders) of one Poisson-sampled Gaussian step."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(
    dp_accounting.PoissonSampledDpEvent(
      sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
  )
  return np.asarray(accountant._rdp, dtype=float)  # pylint: disable=protected-access


def _rdp_epsilon(event: dp_accounting.DpEvent, delta: float) -> Optional[float]:
  """The RDP accountant's epsilon of a composition of self-composed Poisson-sampled Gaussian
  steps, from cached one-step RDPs (RDP adds up over a composition); None for any other event,
  or where the divergences are unstable (the caller then asks the accountant)."""
  parts = _subsampled_gaussian_parts(event)
  if parts is None:
    return None
  if not parts:
    return 0.0
  rdp = sum(steps * _one_step_rdp(q, sigma) for q, sigma, steps in parts)
  if np.any(np.isnan(rdp)) or np.any(rdp < 0):
    return None
  orders = rdp_privacy_accountant.DEFAULT_RDP_ORDERS
  return float(rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])


def _pld_epsilon(event: dp_accounting.DpEvent, delta: float) -> Optional[float]:
  """The PLD accountant's epsilon of a composition of self-composed Poisson-sampled Gaussian
  steps (what `dp_sgd_event` and `compose` build), from cached one-step PLDs; None for any other
  event (the caller then asks the accountant)."""
  parts = _subsampled_gaussian_parts(event)
  if parts is None:
    return None
  total = None
  for q, sigma, steps in parts:
    composed = _one_step_pld(q, sigma).self_compose(steps)
    total = composed if total is None else total.compose(composed)
  return 0.0 if total is None else float(total.get_epsilon_for_delta(delta))


def compose(events: Sequence[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
  """Sequential composition: runs on the same data add up (every step counts)."""
  return dp_accounting.ComposedDpEvent(list(events))
