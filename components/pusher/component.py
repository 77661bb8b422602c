"""Pusher: TFX's Pusher that says what it did, in one PUSHED / NOT PUSHED line on stdout.

TFX's own Pusher logs its outcome at absl's INFO level, which a pipeline script does not show by
default: a model refused by the PrivacyEvaluator and one pushed look the same from the terminal.
This one takes the same arguments and pushes the same way (its executor is TFX's, subclassed),
then prints, e.g.:

  Pusher: PUSHED to /serving/1796650470: epsilon 2.91 at delta 1e-05 is within policy
  Pusher: NOT PUSHED: epsilon 6.934 exceeds the policy's max_epsilon 5 (delta 1e-05, pld)

Example:
  pusher = Pusher(model=trainer.outputs["model"],
                  model_blessing=privacy_gate.outputs["blessing"],
                  push_destination=tfx.proto.PushDestination(...))
"""

from typing import Any, Dict, Optional

from tfx import types
from tfx.components.pusher import component as tfx_pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2

from dp_tfx.components.pusher import executor


class Pusher(tfx_pusher.Pusher):
  """TFX's Pusher with its outcome printed as one line. See module doc."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(
    self,
    model: Optional[types.BaseChannel] = None,
    model_blessing: Optional[types.BaseChannel] = None,
    infra_blessing: Optional[types.BaseChannel] = None,
    push_destination: Optional[pusher_pb2.PushDestination] = None,
    custom_config: Optional[Dict[str, Any]] = None,
  ):
    # TFX's Pusher requires a destination only for its own executor class, not a subclass's.
    if push_destination is None:
      raise ValueError("push_destination is required: where the blessed model is copied")
    super().__init__(
      model=model,
      model_blessing=model_blessing,
      infra_blessing=infra_blessing,
      push_destination=push_destination,
      custom_config=custom_config,
    )
