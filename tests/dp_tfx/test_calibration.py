"""Calibration: the sigma found meets the target within 1%, never above it, and targets that no
accepted sigma reaches get one clear error."""

import math

import pytest

from dp_tfx import accounting, calibration
from dp_tfx.config import MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
@pytest.mark.parametrize("target", [0.5, 3.0])
def test_calibration_round_trips_within_one_percent_never_above(accountant, target):
  sigma = calibration.calibrate_noise_multiplier(
    target_epsilon=target, delta=1e-5, sampling_rate=0.01, steps=1000, accountant=accountant
  )
  epsilon = accounting.compute_epsilon(
    sampling_rate=0.01, noise_multiplier=sigma, steps=1000, delta=1e-5, accountant=accountant
  )
  assert 0.99 * target <= epsilon <= target


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
@pytest.mark.parametrize(
  "target, words",
  [(1e308, "too large"), (1e6, "too large"), (1e-9, "not reachable"), (1e-300, "not reachable")],
)
def test_calibration_outside_the_achievable_range_says_so(accountant, target, words):
  with pytest.raises(calibration.CalibrationError, match=words) as raised:
    calibration.calibrate_noise_multiplier(
      target_epsilon=target, delta=1e-5, sampling_rate=0.05, steps=40, accountant=accountant
    )
  message = str(raised.value)
  assert "achievable" in message and "\n" not in message
  assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("target", [math.inf, math.nan, 0.0, -1.0])
def test_calibration_refuses_targets_that_are_not_positive_numbers(target):
  with pytest.raises(ValueError, match="target_epsilon"):
    calibration.calibrate_noise_multiplier(
      target_epsilon=target, delta=1e-5, sampling_rate=0.05, steps=40
    )


def test_calibration_with_microbatches_uses_2c():
  sigma = calibration.calibrate_noise_multiplier(
    target_epsilon=2.0,
    delta=1e-5,
    sampling_rate=0.05,
    steps=40,
    num_microbatches=2,
    accountant=accounting.RDP,
  )
  per_example = calibration.calibrate_noise_multiplier(
    target_epsilon=2.0, delta=1e-5, sampling_rate=0.05, steps=40, accountant=accounting.RDP
  )
  assert sigma == pytest.approx(2 * per_example, rel=1e-3)
  assert (
    accounting.compute_epsilon(
      sampling_rate=0.05,
      noise_multiplier=sigma,
      steps=40,
      delta=1e-5,
      num_microbatches=2,
      accountant=accounting.RDP,
    )
    <= 2.0
  )


def test_calibrated_sigma_is_within_the_accepted_range():
  sigma = calibration.calibrate_noise_multiplier(
    target_epsilon=1e-3, delta=1e-5, sampling_rate=0.05, steps=40
  )
  assert MIN_NOISE_MULTIPLIER <= sigma <= MAX_NOISE_MULTIPLIER
  assert (
    accounting.compute_epsilon(sampling_rate=0.05, noise_multiplier=sigma, steps=40, delta=1e-5)
    <= 1e-3
  )
