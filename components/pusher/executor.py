"""The Pusher's executor: TFX's, then one line that says whether and why the model was pushed."""

from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.types import artifact_utils, standard_component_specs

from dp_tfx.components.artifacts import REASON_PROPERTY

# The Pusher's and the blessings' own property names (private in TFX's executors).
_PUSHED_PROPERTY = "pushed"
_PUSHED_DESTINATION_PROPERTY = "pushed_destination"
_BLESSED_PROPERTY = "blessed"
_BLESSINGS = (
  standard_component_specs.MODEL_BLESSING_KEY,
  standard_component_specs.INFRA_BLESSING_KEY,
)


class Executor(tfx_pusher_executor.Executor):
  """Pushes as TFX's Pusher does, then prints its outcome (absl logs it out of sight)."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    super().Do(input_dict, output_dict, exec_properties)
    pushed = artifact_utils.get_single_instance(
      output_dict[standard_component_specs.PUSHED_MODEL_KEY]
    )
    print("Pusher: " + outcome_line(pushed, input_dict), flush=True)


def outcome_line(pushed: types.Artifact, input_dict: Dict[str, List[types.Artifact]]) -> str:
  """ "PUSHED to DESTINATION: why" or "NOT PUSHED: why", the why from the blessings' reasons
  (the PrivacyEvaluator's records its decision; other blessings only their verdict)."""
  blessings = [
    (key, artifact_utils.get_single_instance(input_dict[key]))
    for key in _BLESSINGS
    if input_dict.get(key)
  ]
  if pushed.get_int_custom_property(_PUSHED_PROPERTY) == 1:
    destination = pushed.get_string_custom_property(_PUSHED_DESTINATION_PROPERTY)
    reasons = [_reason(blessing, "BLESSED: ") for _, blessing in blessings]
    reasons = [reason for reason in reasons if reason]
    return f"PUSHED to {destination}" + (": " + "; ".join(reasons) if reasons else "")
  refused = [
    _reason(blessing, "NOT BLESSED: ") or f"the {key} at {blessing.uri} is not blessed"
    for key, blessing in blessings
    if blessing.get_int_custom_property(_BLESSED_PROPERTY) != 1
  ]
  return "NOT PUSHED: " + "; ".join(refused or ["the model was not blessed"])


def _reason(blessing: types.Artifact, verdict: str) -> str:
  """The blessing's recorded reason without its verdict word, or "" where it records none."""
  if not blessing.has_custom_property(REASON_PROPERTY):
    return ""
  reason = blessing.get_string_custom_property(REASON_PROPERTY)
  return reason[len(verdict) :] if reason.startswith(verdict) else reason
