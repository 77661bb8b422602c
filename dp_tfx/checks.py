"""Type checks for values read from configs and JSON, where a bool must not pass for a number."""

import dataclasses
import math
import numbers
from typing import Any


def is_int(value: Any) -> bool:
  """An int, but not a bool (True would otherwise count as 1)."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
  """An int or float that is neither a bool, NaN nor infinite."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole_number(value: Any) -> bool:
  """An integral number (an int, or a finite float such as 3.0), but not a bool."""
  if isinstance(value, bool):
    return False
  if isinstance(value, numbers.Integral):
    return True
  return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def unknown_fields(cls: type, values: dict, what: str):
  """A ValueError naming the keys of `values` that are not fields of the dataclass `cls`, or None
  (a typo in a config must not pass silently as a default)."""
  known = {field.name for field in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if not unknown:
    return None
  return ValueError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}")
