"""The training examples a non-private control has learned and the DP model has not.

The TensorFlow Privacy announcement showed such a list for its language models: sentences of the
training data that the non-private model scored as very likely and the DP model did not, rare
sequences the control memorised. Here, among the training examples the audit attacks, those whose
loss under the DP model exceeds their loss under the control by the most.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from dp_tfx.checks import is_finite_number, is_int

DEFAULT_COUNT = 10


@dataclasses.dataclass(frozen=True)
class Disagreement:
  """One training example: its losses under the DP model and the control.

  Attributes:
    record: the example's position among the audited training records (the train split in file
      order, without canary copies).
    model_loss: the DP model's loss on it (the module's loss, as in training).
    control_loss: the non-private control's loss on it.
    text: the example as the user module renders it (`example_text`), if it does.
  """

  record: int
  model_loss: float
  control_loss: float
  text: Optional[str] = None

  def __post_init__(self):
    if not (is_int(self.record) and self.record >= 0):
      raise ValueError(f"Disagreement.record must be an int >= 0; got {self.record!r}")
    for name in ("model_loss", "control_loss"):
      if not is_finite_number(getattr(self, name)):
        raise ValueError(
          f"Disagreement.{name} must be a finite number; got {getattr(self, name)!r}"
        )
    if self.text is not None and not isinstance(self.text, str):
      raise ValueError(f"Disagreement.text must be a string or None; got {self.text!r}")

  @property
  def gap(self) -> float:
    """How much likelier the control finds the example than the DP model (loss difference)."""
    return self.model_loss - self.control_loss

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "gap": self.gap}

  @classmethod
  def from_dict(cls, values: dict) -> "Disagreement":
    values = dict(values)
    values.pop("gap", None)  # derived
    return cls(**values)


def most_disagreeing(
  records: Sequence[int],
  model_losses,
  control_losses,
  texts: Optional[Sequence[str]] = None,
  count: int = DEFAULT_COUNT,
) -> List[Disagreement]:
  """The `count` examples with the largest model_loss - control_loss, largest first.

  Ties keep the order of `records`, so the list is the same on every run of the same audit;
  examples with an infinite or NaN loss under either model are left out.
  """
  model_losses = np.asarray(model_losses, np.float64)
  control_losses = np.asarray(control_losses, np.float64)
  if not len(records) == len(model_losses) == len(control_losses):
    raise ValueError(
      f"one loss per record from each model: {len(records)} records, "
      f"{len(model_losses)} and {len(control_losses)} losses"
    )
  gaps = model_losses - control_losses
  # An example either model scores as impossible (an infinite or NaN loss) has no gap to rank.
  ranked = np.flatnonzero(np.isfinite(gaps))
  order = ranked[np.argsort(-gaps[ranked], kind="stable")][:count]
  return [
    Disagreement(
      record=int(records[i]),
      model_loss=float(model_losses[i]),
      control_loss=float(control_losses[i]),
      text=None if texts is None else texts[i],
    )
    for i in order
  ]
