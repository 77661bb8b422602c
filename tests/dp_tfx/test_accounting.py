"""Accounting against the reference values of docs/architecture.md and the microbatch rule."""

import math

import dp_accounting
import pytest

from dp_tfx import accounting

# docs/architecture.md, "Accounting reference values": delta 1e-5, Poisson sampling, N = 60000,
# batch 256, per-example clipping.
REFERENCE = [  # (sigma, steps, epsilon RDP, epsilon PLD)
  (1.1, 14062, 2.597, 2.382),
  (1.3, 3515, 0.954, 0.864),
  (0.7, 10546, 6.319, 5.639),
]
Q = 256 / 60000


@pytest.mark.parametrize("sigma, steps, rdp, pld", REFERENCE)
@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
def test_reference_values_to_one_percent(sigma, steps, rdp, pld, accountant):
  expected = rdp if accountant == accounting.RDP else pld
  epsilon = accounting.compute_epsilon(
    sampling_rate=Q, noise_multiplier=sigma, steps=steps, delta=1e-5, accountant=accountant
  )
  assert epsilon == pytest.approx(expected, rel=0.01)


def test_epochs_to_steps_follows_the_reference_table():
  assert [accounting.steps_for_epochs(e, 60000, 256) for e in (60, 15, 45)] == [14062, 3515, 10546]


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
def test_microbatches_double_the_sensitivity(accountant):
  microbatched = accounting.compute_epsilon(
    sampling_rate=Q,
    noise_multiplier=2.2,
    steps=3515,
    delta=1e-5,
    num_microbatches=32,
    accountant=accountant,
  )
  per_example_half_noise = accounting.compute_epsilon(
    sampling_rate=Q, noise_multiplier=1.1, steps=3515, delta=1e-5, accountant=accountant
  )
  per_example = accounting.compute_epsilon(
    sampling_rate=Q, noise_multiplier=2.2, steps=3515, delta=1e-5, accountant=accountant
  )
  assert microbatched == pytest.approx(per_example_half_noise, rel=1e-9)
  assert microbatched > per_example


def test_zero_noise_is_infinitely_private_nothing():
  assert (
    accounting.compute_epsilon(sampling_rate=Q, noise_multiplier=0.0, steps=10, delta=1e-5)
    == math.inf
  )


def test_composing_runs_equals_one_longer_run():
  halves = accounting.compose([accounting.dp_sgd_event(Q, 1.1, 1000)] * 2)
  whole = accounting.dp_sgd_event(Q, 1.1, 2000)
  for accountant in accounting.ACCOUNTANTS:
    assert accounting.epsilon_of_event(halves, 1e-5, accountant) == pytest.approx(
      accounting.epsilon_of_event(whole, 1e-5, accountant), rel=1e-3
    )


def test_epsilon_grows_over_steps():
  curve = accounting.epsilon_curve(
    lambda s: accounting.dp_sgd_event(Q, 1.1, s), [100, 1000, 5000], 1e-5
  )
  values = [epsilon for _, epsilon in curve]
  assert values == sorted(values) and values[0] > 0


@pytest.mark.parametrize(
  "bad",
  [
    dict(sampling_rate=0.0),
    dict(sampling_rate=1.5),
    dict(noise_multiplier=-1.0),
    dict(steps=-3),
    # malformed: a ValueError, not an overflow deep in the accountant
    dict(noise_multiplier=float("nan")),
    dict(steps=2.5),
    dict(steps=float("inf")),
    dict(sampling_rate=float("nan")),
  ],
)
def test_invalid_facts_raise(bad):
  args = dict(sampling_rate=Q, noise_multiplier=1.0, steps=10)
  args.update(bad)
  with pytest.raises(ValueError):
    accounting.dp_sgd_event(**args)


def test_unknown_accountant_raises():
  with pytest.raises(ValueError, match="accountant"):
    accounting.make_accountant("moments")


def test_events_are_dp_accounting_events():
  event = accounting.dp_sgd_event(Q, 1.1, 10)
  assert isinstance(event, dp_accounting.SelfComposedDpEvent)
  assert event.count == 10


# --- Failing closed on numbers (issue 12): inf, never a lower value, never a crash. ---

# Facts beyond what the accountants handle (each took an OverflowError, ZeroDivisionError or tens
# of GB before). Every one is cheap now: the PLD accountant is not run where it would blow up.
EXTREME_FACTS = [  # (sampling_rate, noise_multiplier, steps, num_microbatches)
  (0.05, 1e-300, 40, None),
  (0.05, 1e-10, 40, None),
  (0.05, 0.01, 40, None),  # PLD wanted ~20 GB here
  (0.05, 1e308, 40, None),
  (0.05, 1.1, 10**20, None),
  (0.05, 1.1, 99999999999999999999, 4),
  (0.05, 0.3, 10**7, None),  # PLD wanted 17.8 GB here
  (1e-4, 0.05, 1000, None),  # PLD took minutes here
  (0.05, 0.3, 1000, 8),  # microbatches: 0.15 per unit of sensitivity
]


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
@pytest.mark.parametrize("q, sigma, steps, microbatches", EXTREME_FACTS)
def test_extreme_facts_give_inf_or_a_valid_bound_never_an_error(
  q, sigma, steps, microbatches, accountant
):
  result = accounting.compute_epsilon_result(
    sampling_rate=q,
    noise_multiplier=sigma,
    steps=steps,
    delta=1e-5,
    num_microbatches=microbatches,
    accountant=accountant,
  )
  if result.finite:
    # RDP bounds some of them (with huge epsilons): never below the same run with more noise and
    # fewer steps, inside the accepted range.
    assert accountant == accounting.RDP and sigma <= 1.1 and result.reason is None
    in_range = accounting.compute_epsilon(
      sampling_rate=q,
      noise_multiplier=max(sigma, 0.05),
      steps=min(steps, 1000),
      delta=1e-5,
      num_microbatches=microbatches,
      accountant=accounting.RDP,
    )
    assert result.epsilon >= in_range
  else:
    assert result.epsilon == math.inf and result.reason


@pytest.mark.parametrize(
  "q, sigma, steps, microbatches", [f for f in EXTREME_FACTS if f[1] >= 1 or f[1] < 1e-100]
)
def test_overflowing_facts_give_inf_with_pld(q, sigma, steps, microbatches):
  assert (
    accounting.compute_epsilon(
      sampling_rate=q,
      noise_multiplier=sigma,
      steps=steps,
      delta=1e-5,
      num_microbatches=microbatches,
    )
    == math.inf
  )


def test_pld_is_not_run_where_it_would_need_gigabytes_and_says_rdp_bound():
  pld = accounting.compute_epsilon_result(
    sampling_rate=0.05, noise_multiplier=0.3, steps=1000, delta=1e-5
  )
  rdp = accounting.compute_epsilon(
    sampling_rate=0.05, noise_multiplier=0.3, steps=1000, delta=1e-5, accountant=accounting.RDP
  )
  assert pld.epsilon == math.inf and rdp > accounting.PLD_MAX_RDP_EPSILON
  assert f"{rdp:.4g}" in pld.reason
  # sigma 0.3 per example is fine; with microbatches (2C) it is 0.15 per unit of sensitivity
  assert (
    accounting.compute_epsilon(sampling_rate=0.05, noise_multiplier=0.3, steps=40, delta=1e-5) < 100
  )
  small = accounting.compute_epsilon_result(
    sampling_rate=0.05, noise_multiplier=0.3, steps=40, delta=1e-5, num_microbatches=2
  )
  assert small.epsilon == math.inf and "0.15" in small.reason


def test_a_composition_with_one_extreme_part_is_inf():
  normal = accounting.dp_sgd_event(Q, 1.1, 100)
  extreme = accounting.dp_sgd_event(Q, 1e-300, 1)
  for accountant in accounting.ACCOUNTANTS:
    assert (
      accounting.epsilon_of_event(accounting.compose([normal, extreme]), 1e-5, accountant)
      == math.inf
    )


class _FailingAccountant:
  """Stands for dp_accounting failing inside compose/get_epsilon."""

  def __init__(self, failure):
    self.failure = failure

  def supports(self, event):
    return True

  def compose(self, event):
    return self

  def get_epsilon(self, delta):
    if isinstance(self.failure, BaseException):
      raise self.failure
    return self.failure


@pytest.mark.parametrize(
  "failure",
  [
    OverflowError("(34, 'Numerical result out of range')"),
    ZeroDivisionError("float division"),
    FloatingPointError("overflow"),
    MemoryError("Unable to allocate 38.0 GiB"),
    ValueError("Maximum allowed size exceeded"),
    float("nan"),
    -1.0,
    math.inf,
  ],
)
@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
def test_numeric_failures_inside_the_accountant_give_inf_with_a_reason(
  monkeypatch, failure, accountant
):
  monkeypatch.setattr(
    accounting, "make_accountant", lambda name=accounting.PLD: _FailingAccountant(failure)
  )
  result = accounting.compute_epsilon_result(
    sampling_rate=Q, noise_multiplier=1.1, steps=10, delta=1e-5, accountant=accountant
  )
  assert result.epsilon == math.inf and result.reason
  assert (
    accounting.epsilon_of_event(accounting.dp_sgd_event(Q, 1.1, 10), 1e-5, accountant) == math.inf
  )


def test_a_negative_renyi_divergence_is_inf_not_zero(monkeypatch):
  """dp_accounting turns a negative RDP (numerical instability) into epsilon 0: we do not."""

  class Unstable(dp_accounting.rdp.RdpAccountant):
    def compose(self, event, count=1):
      super().compose(event, count)
      self._rdp[0] = -1e-16
      return self

  monkeypatch.setattr(accounting, "make_accountant", lambda name=accounting.PLD: Unstable())
  result = accounting.compute_epsilon_result(
    sampling_rate=Q, noise_multiplier=1.1, steps=10, delta=1e-5, accountant=accounting.RDP
  )
  assert result.epsilon == math.inf and "unstable" in result.reason


def test_steps_for_epochs_refuses_uncountable_epochs():
  assert accounting.steps_for_epochs(1e300, 4000, 200) > 10**300  # a number: the plan refuses it
  for epochs in (1e308, math.inf, math.nan, 0, -1):
    with pytest.raises(ValueError, match="epochs"):
      accounting.steps_for_epochs(epochs, 4000, 200)


def test_rdp_orders_that_do_not_converge_are_dropped_silently_and_only_loosen_the_bound(caplog):
  facts = dict(sampling_rate=0.156479, noise_multiplier=1.1, steps=19, delta=1e-5)
  with caplog.at_level("WARNING"):
    rdp = accounting.compute_epsilon(**facts, accountant=accounting.RDP)
  assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
  # Leaving orders out of RDP's minimum can only raise epsilon: the PLD bound stays below it.
  assert accounting.compute_epsilon(**facts) < rdp


def test_the_pld_curve_from_cached_one_step_plds_equals_the_accountant_point_by_point():
  def after(steps):  # two runs composed: 300 steps at q 0.01, sigma 1.1, then at q 0.02, sigma 1.5
    return accounting.compose(
      [
        accounting.dp_sgd_event(0.01, 1.1, min(steps, 300)),
        accounting.dp_sgd_event(0.02, 1.5, max(0, steps - 300)),
      ]
    )

  points = [1, 150, 300, 301, 450, 600]
  curve = accounting.epsilon_curve(after, points, 1e-5)
  assert [s for s, _ in curve] == points
  for steps, epsilon in curve:
    assert epsilon == pytest.approx(accounting.epsilon_of_event(after(steps), 1e-5), rel=1e-9)


def _distinct_runs(count, steps=50):
  """`count` runs of DP-SGD, each its own (q, sigma): as a history of changing data leaves."""
  return accounting.compose(
    [
      accounting.dp_sgd_event(64 / (4000 + 37 * index), 1.0 + 0.02 * index, steps)
      for index in range(count)
    ]
  )


def test_a_few_groups_are_composed_exactly():
  event = _distinct_runs(accounting.PLD_MAX_GROUPS)
  assert accounting.merged_conservatively(event) is event


def test_many_groups_are_merged_into_a_dominating_event_never_lower():
  event = _distinct_runs(12)
  merged = accounting.merged_conservatively(event, max_groups=3)
  assert len(merged.events) == 3
  assert sum(part.count for part in merged.events) == 12 * 50
  exact = accounting._run_accountant(event, 1e-5, accounting.PLD).epsilon
  bound = accounting._run_accountant(merged, 1e-5, accounting.PLD).epsilon
  # Never lower than the exact composition; for runs this alike, within 10% of it.
  assert exact <= bound <= 1.10 * exact
  # epsilon_result merges only the PLD answer, and only beyond PLD_MAX_GROUPS.
  many = _distinct_runs(accounting.PLD_MAX_GROUPS + 4)
  assert (
    accounting.epsilon_of_event(many, 1e-5)
    >= accounting._run_accountant(many, 1e-5, accounting.PLD).epsilon
  )
  assert accounting.epsilon_of_event(many, 1e-5, accounting.RDP) == pytest.approx(
    accounting._run_accountant(many, 1e-5, accounting.RDP).epsilon, rel=1e-12
  )


def test_a_curve_over_many_groups_bounds_each_point_and_ends_at_the_decision():
  runs = [
    accounting.dp_sgd_event(64 / (4000 + 37 * index), 1.0 + 0.02 * index, 50)
    for index in range(accounting.PLD_MAX_GROUPS + 4)
  ]

  def after(steps):  # the first `steps` steps, run after run
    counted, left = [], steps
    for run in runs:
      counted.append(
        accounting.dp_sgd_event(
          run.event.sampling_probability, run.event.event.noise_multiplier, min(left, run.count)
        )
      )
      left -= min(left, run.count)
    return accounting.compose(counted)

  curve = accounting.epsilon_curve(after, [100, 300, 600], 1e-5)
  assert [step for step, _ in curve] == [100, 300, 600]
  assert curve[-1][1] == accounting.epsilon_of_event(after(600), 1e-5)
  for step, epsilon in curve[:-1]:
    assert epsilon >= accounting._run_accountant(after(step), 1e-5, accounting.PLD).epsilon
  assert [e for _, e in curve] == sorted(e for _, e in curve)
