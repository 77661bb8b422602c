"""Type checks for values read from configs and JSON, where a bool must not pass for a number."""

import math
from typing import Any


def is_int(value: Any) -> bool:
  """An int, but not a bool (True would otherwise count as 1)."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
  """An int or float that is neither a bool, NaN nor infinite."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
