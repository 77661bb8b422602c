"""JSON that is JSON: Python writes float('inf') and NaN as Infinity and NaN, which strict parsers
(and most languages' JSON libraries) refuse. ε is infinite where accounting cannot bound it, so
every JSON we print or write goes through here."""

from __future__ import annotations

import json
import math


def json_safe(value):
  """A copy of `value` where a non-finite number becomes null, and in an object a
  "<key>_infinite": true beside it (unless the object already says so)."""
  if isinstance(value, dict):
    safe = {}
    for key, item in value.items():
      if isinstance(item, float) and not math.isfinite(item):
        safe[key] = None
        if math.isinf(item):
          safe.setdefault(f"{key}_infinite", True)
      else:
        safe[key] = json_safe(item)
    for key, item in value.items():  # an explicit "<key>_infinite" wins over the default
      if key.endswith("_infinite"):
        safe[key] = json_safe(item)
    return safe
  if isinstance(value, (list, tuple)):
    return [
      None if isinstance(item, float) and not math.isfinite(item) else json_safe(item)
      for item in value
    ]
  return value


def dumps(value, **kwargs) -> str:
  """json.dumps of json_safe(value); allow_nan=False, so a non-finite number can never slip by."""
  return json.dumps(json_safe(value), allow_nan=False, **kwargs)
