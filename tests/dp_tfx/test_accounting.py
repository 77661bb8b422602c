"""Accounting against DESIGN.md's reference values, the microbatch rule and calibration."""

import math

import dp_accounting
import pytest

from dp_tfx import accounting

# DESIGN.md, "Accounting": delta 1e-5, Poisson sampling, N = 60000, batch 256, per-example.
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
  epsilon = accounting.compute_epsilon(sampling_rate=Q, noise_multiplier=sigma, steps=steps,
                                       delta=1e-5, accountant=accountant)
  assert epsilon == pytest.approx(expected, rel=0.01)


def test_epochs_to_steps_follows_the_reference_table():
  assert [accounting.steps_for_epochs(e, 60000, 256) for e in (60, 15, 45)] == [14062, 3515, 10546]


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
def test_microbatches_double_the_sensitivity(accountant):
  microbatched = accounting.compute_epsilon(sampling_rate=Q, noise_multiplier=2.2, steps=3515,
                                            delta=1e-5, num_microbatches=32, accountant=accountant)
  per_example_half_noise = accounting.compute_epsilon(
      sampling_rate=Q, noise_multiplier=1.1, steps=3515, delta=1e-5, accountant=accountant)
  per_example = accounting.compute_epsilon(sampling_rate=Q, noise_multiplier=2.2, steps=3515,
                                           delta=1e-5, accountant=accountant)
  assert microbatched == pytest.approx(per_example_half_noise, rel=1e-9)
  assert microbatched > per_example


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
@pytest.mark.parametrize("target", [0.5, 3.0])
def test_calibration_round_trips_within_one_percent_never_above(accountant, target):
  sigma = accounting.calibrate_noise_multiplier(target_epsilon=target, delta=1e-5,
                                                sampling_rate=0.01, steps=1000,
                                                accountant=accountant)
  epsilon = accounting.compute_epsilon(sampling_rate=0.01, noise_multiplier=sigma, steps=1000,
                                       delta=1e-5, accountant=accountant)
  assert 0.99 * target <= epsilon <= target


def test_zero_noise_is_infinitely_private_nothing():
  assert accounting.compute_epsilon(sampling_rate=Q, noise_multiplier=0.0, steps=10,
                                    delta=1e-5) == math.inf


def test_composing_runs_equals_one_longer_run():
  halves = accounting.compose([accounting.dp_sgd_event(Q, 1.1, 1000)] * 2)
  whole = accounting.dp_sgd_event(Q, 1.1, 2000)
  for accountant in accounting.ACCOUNTANTS:
    assert accounting.epsilon_of_event(halves, 1e-5, accountant) == pytest.approx(
        accounting.epsilon_of_event(whole, 1e-5, accountant), rel=1e-3)


def test_epsilon_grows_over_steps():
  curve = accounting.epsilon_curve(lambda s: accounting.dp_sgd_event(Q, 1.1, s), [100, 1000, 5000],
                                   1e-5)
  values = [epsilon for _, epsilon in curve]
  assert values == sorted(values) and values[0] > 0


@pytest.mark.parametrize("bad", [dict(sampling_rate=0.0), dict(sampling_rate=1.5),
                                 dict(noise_multiplier=-1.0), dict(steps=-3)])
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
