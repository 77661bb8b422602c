"""Who joins which step's Poisson sample, and the draw's identity that every record names."""

from __future__ import annotations

import secrets
from typing import Tuple

import numpy as np

from dp_tfx.checks import is_finite_number


def inclusion_steps(
  rng: np.random.Generator, sampling_rate: float, first_step: int, last_step: int
) -> np.ndarray:
  """The steps in [first_step, last_step) whose Poisson sample includes one example.

  Each step includes it independently with probability `sampling_rate`: the gap from one
  inclusion to the next is geometric (memoryless), so drawing the gaps takes work proportional to
  the inclusions, q (last - first) on average, and a range of steps can be drawn on its own.
  """
  if not (is_finite_number(sampling_rate) and 0 < sampling_rate <= 1):
    raise ValueError(f"the sampling rate must be in (0, 1]; got {sampling_rate!r}")
  found, position = [], first_step - 1
  block = int(sampling_rate * (last_step - first_step) * 1.25) + 8
  while position < last_step - 1:
    positions = position + np.cumsum(rng.geometric(sampling_rate, size=block))
    found.append(positions[positions < last_step])
    position = int(positions[-1])
  return np.concatenate(found) if found else np.zeros([0], np.int64)


def new_draw(first_step: int, last_step: int) -> str:
  """A fresh draw's identity: random, with the steps it covers. Every record of the draw names
  it and the ledger records it, so that no step of a draw is trained on twice (see
  PoissonBatchStream.next_step), however its files are copied, renamed or re-packed."""
  return f"{secrets.token_hex(16)}/{first_step}-{last_step}"


def draw_steps(draw: str) -> Tuple[int, int]:
  """The steps [first, last) a draw covers (see `new_draw`)."""
  try:
    first, last = (int(part) for part in draw.rsplit("/", 1)[1].split("-"))
  except (IndexError, ValueError):
    raise ValueError(f"{draw!r} is not a draw's identity") from None
  return first, last


def draw_first_step(draw: str) -> int:
  """The first step a draw covers (see `new_draw`)."""
  return draw_steps(draw)[0]
