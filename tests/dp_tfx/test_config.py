"""DPConfig validation and its resolution into a TrainingPlan."""

import math

import pytest

from dp_tfx.config import MAX_NOISE_MULTIPLIER, MAX_STEPS, MIN_NOISE_MULTIPLIER, DPConfig
from dp_tfx.plan import TrainingPlan, default_physical_batch_size


@pytest.mark.parametrize(
  "field, value",
  [
    ("l2_norm_clip", 0.0),
    ("l2_norm_clip", float("nan")),
    ("noise_multiplier", -0.1),
    ("target_epsilon", 0.0),
    ("delta", 1.0),
    ("delta", 0.0),
    ("batch_size", 0),
    ("batch_size", 2.5),
    ("epochs", -1.0),
    ("num_microbatches", 0),
    ("sampling", "uniform"),
    ("physical_batch_size", 0),
    ("seed", -1),
  ],
)
def test_invalid_values_name_the_field(field, value):
  values = {"noise_multiplier": 1.0, "epochs": 1}
  values[field] = value
  if field == "target_epsilon":
    values.pop("noise_multiplier")
  with pytest.raises(ValueError, match=field):
    DPConfig(**values)


def test_needs_exactly_one_of_noise_or_target():
  with pytest.raises(ValueError, match="got neither"):
    DPConfig(epochs=1)
  with pytest.raises(ValueError, match="not both"):
    DPConfig(noise_multiplier=1.0, target_epsilon=1.0, epochs=1)


def test_needs_exactly_one_of_epochs_or_steps():
  with pytest.raises(ValueError, match="epochs"):
    DPConfig(noise_multiplier=1.0)
  with pytest.raises(ValueError, match="epochs"):
    DPConfig(noise_multiplier=1.0, epochs=1, steps=3)


def test_json_round_trip_and_unknown_fields():
  config = DPConfig(noise_multiplier=1.3, epochs=2, num_microbatches=4, seed=7)
  assert DPConfig.from_json(config.to_json()) == config
  with pytest.raises(ValueError, match="unknown DPConfig field"):
    DPConfig.from_dict({"noise_multiplier": 1.0, "epochs": 1, "clip": 2})


def test_plan_resolves_rate_steps_and_delta():
  plan = TrainingPlan.from_config(DPConfig(noise_multiplier=1.1, batch_size=256, epochs=60), 60000)
  assert plan.sampling_rate == pytest.approx(256 / 60000)
  assert plan.steps == 14062
  assert plan.delta == pytest.approx(1 / 60000)
  assert plan.physical_batch_size >= 256 + 4 * 16 - 1


def test_plan_calibrates_sigma_for_target_epsilon():
  plan = TrainingPlan.from_config(
    DPConfig(target_epsilon=2.0, delta=1e-5, batch_size=100, epochs=5), 10000
  )
  epsilon = plan.epsilon()
  assert 0.99 * 2.0 <= epsilon <= 2.0


def test_plan_rejects_batches_larger_than_the_data():
  with pytest.raises(ValueError, match="batch_size"):
    TrainingPlan.from_config(DPConfig(noise_multiplier=1.0, batch_size=500, epochs=1), 100)


def test_default_physical_batch_holds_four_standard_deviations():
  assert default_physical_batch_size(256, 256 / 60000, "poisson") == 320
  assert default_physical_batch_size(256, 0.5, "shuffle") == 256


@pytest.mark.parametrize(
  "field, value",
  [
    ("noise_multiplier", 1e-300),
    ("noise_multiplier", 0.01),
    ("noise_multiplier", 1000.5),
    ("noise_multiplier", 1e308),
    ("noise_multiplier", float("inf")),
    ("steps", 10_000_001),
    ("steps", 99999999999999999999),
    ("epochs", 1e300),
    ("epochs", float("inf")),
  ],
)
def test_numbers_the_accountants_cannot_handle_are_refused(field, value):
  values = {"noise_multiplier": 1.0, "steps": 10}
  if field == "epochs":
    del values["steps"]
  values[field] = value
  with pytest.raises(ValueError, match=field):
    DPConfig(**values)


@pytest.mark.parametrize("sigma", [0.0, MIN_NOISE_MULTIPLIER, 1.1, MAX_NOISE_MULTIPLIER])
def test_accepted_noise_multipliers(sigma):
  assert DPConfig(noise_multiplier=sigma, steps=MAX_STEPS).noise_multiplier == sigma


def test_plan_refuses_epochs_that_give_too_many_steps():
  with pytest.raises(ValueError, match="epochs.*10,000,000"):
    TrainingPlan.from_config(DPConfig(noise_multiplier=1.1, batch_size=200, epochs=1e6), 4000)


def test_plan_epsilon_is_inf_with_a_reason_where_it_cannot_be_bounded():
  plan = TrainingPlan.from_config(
    DPConfig(noise_multiplier=0.0, batch_size=200, epochs=2, delta=1e-5), 4000
  )
  result = plan.epsilon_result()
  assert plan.epsilon() == result.epsilon == math.inf and "not private" in result.reason
  plan = TrainingPlan.from_config(
    DPConfig(noise_multiplier=1.1, batch_size=200, epochs=2, delta=1e-5), 4000
  )
  assert plan.epsilon_result().finite and plan.epsilon_result().reason is None


@pytest.mark.parametrize("num_microbatches, multiplier", [(None, 1), (1, 1), (2, 2), (200, 2)])
def test_plan_sensitivity_is_2c_for_any_microbatching(num_microbatches, multiplier):
  plan = TrainingPlan.from_config(
    DPConfig(
      noise_multiplier=1.1, batch_size=200, epochs=2, num_microbatches=num_microbatches, delta=1e-5
    ),
    4000,
  )
  assert plan.sensitivity_multiplier == multiplier


def test_plan_calibration_outside_the_achievable_range_is_a_clear_value_error():
  with pytest.raises(ValueError, match="achievable"):
    TrainingPlan.from_config(
      DPConfig(target_epsilon=1e308, batch_size=200, epochs=2, delta=1e-5), 4000
    )
