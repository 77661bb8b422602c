"""The Pusher pushes as TFX's does and prints one PUSHED / NOT PUSHED line saying why."""

import pathlib

import pytest
from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from dp_tfx.components import Pusher, testing
from dp_tfx.components.pusher import executor
from dp_tfx.policy import PrivacyPolicy

POLICY = PrivacyPolicy(max_epsilon=3.0, delta=1e-5)


def _ledger():
  return testing.make_ledger(dataset_size=60000, batch_size=256, noise_multiplier=1.1, steps=2000)


def _push(directory, blessings):
  """Runs the Pusher's executor on the stand-in model the evaluator judged; its printed line."""
  root = pathlib.Path(directory)
  model = standard_artifacts.Model()
  model.uri = str(root / "model")
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(root / "pushed")
  destination = tfx.proto.PushDestination(
    filesystem=tfx.proto.PushDestination.Filesystem(base_directory=str(root / "serving"))
  )
  executor.Executor().Do(
    {standard_component_specs.MODEL_KEY: [model], **blessings},
    {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
    {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)},
  )
  return pushed


def _line(capsys):
  (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Pusher:")]
  return line


def test_a_blessed_model_is_pushed_with_its_epsilon_in_the_line(tmp_path, capsys):
  result = testing.run_privacy_evaluator(_ledger(), POLICY, tmp_path)
  pushed = _push(tmp_path, {standard_component_specs.MODEL_BLESSING_KEY: [result.blessing]})
  destination = pushed.get_string_custom_property("pushed_destination")
  assert pathlib.Path(destination, "saved_model.pb").read_bytes() == b"stand-in model"
  epsilon = result.report["epsilon"]
  assert _line(capsys) == (
    f"Pusher: PUSHED to {destination}: epsilon {epsilon:.4g} at delta 1e-05 is within policy"
  )


def test_a_refused_model_is_not_pushed_and_the_line_says_why(tmp_path, capsys):
  strict = PrivacyPolicy(max_epsilon=0.5, delta=1e-5)
  result = testing.run_privacy_evaluator(_ledger(), strict, tmp_path)
  pushed = _push(tmp_path, {standard_component_specs.MODEL_BLESSING_KEY: [result.blessing]})
  assert pushed.get_int_custom_property("pushed") == 0
  assert not (tmp_path / "serving").exists()
  line = _line(capsys)
  assert line.startswith("Pusher: NOT PUSHED: epsilon ")
  assert "exceeds the policy's max_epsilon 0.5" in line


def test_a_blessing_that_records_no_reason_is_named(tmp_path, capsys):
  blessing = standard_artifacts.InfraBlessing()
  blessing.uri = str(tmp_path / "infra")
  blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, 0)
  _push(tmp_path, {standard_component_specs.INFRA_BLESSING_KEY: [blessing]})
  assert _line(capsys) == f"Pusher: NOT PUSHED: the infra_blessing at {blessing.uri} is not blessed"


def test_a_pusher_without_a_destination_is_refused_when_the_pipeline_is_built():
  model = tfx.dsl.Channel(type=standard_artifacts.Model)
  with pytest.raises(ValueError, match="push_destination is required"):
    Pusher(model=model)
