"""DPConfig validation and its resolution into a TrainingPlan."""

import pytest

from dp_tfx import accounting
from dp_tfx.config import DPConfig
from dp_tfx.plan import TrainingPlan, default_physical_batch_size


@pytest.mark.parametrize("field, value", [
    ("l2_norm_clip", 0.0), ("l2_norm_clip", float("nan")), ("noise_multiplier", -0.1),
    ("target_epsilon", 0.0), ("delta", 1.0), ("delta", 0.0), ("batch_size", 0),
    ("batch_size", 2.5), ("epochs", -1.0), ("num_microbatches", 0), ("sampling", "uniform"),
    ("physical_batch_size", 0), ("seed", -1),
])
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
  plan = TrainingPlan.from_config(DPConfig(noise_multiplier=1.1, batch_size=256, epochs=60),
                                  60000)
  assert plan.sampling_rate == pytest.approx(256 / 60000)
  assert plan.steps == 14062
  assert plan.delta == pytest.approx(1 / 60000)
  assert plan.physical_batch_size >= 256 + 4 * 16 - 1


def test_plan_calibrates_sigma_for_target_epsilon():
  plan = TrainingPlan.from_config(
      DPConfig(target_epsilon=2.0, delta=1e-5, batch_size=100, epochs=5), 10000)
  epsilon = plan.epsilon()
  assert 0.99 * 2.0 <= epsilon <= 2.0


def test_plan_rejects_batches_larger_than_the_data():
  with pytest.raises(ValueError, match="batch_size"):
    TrainingPlan.from_config(DPConfig(noise_multiplier=1.0, batch_size=500, epochs=1), 100)


def test_default_physical_batch_holds_four_standard_deviations():
  assert default_physical_batch_size(256, 256 / 60000, "poisson") == 320
  assert default_physical_batch_size(256, 0.5, "shuffle") == 256
