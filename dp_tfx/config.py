"""DP-SGD training configuration, validated once with errors that name the field.

`DPConfig` is what a user writes. It is turned into a `TrainingPlan` (see `plan.py`) once the
dataset size is known: the plan is the frozen object that fixes everything the guarantee depends on.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from dp_tfx.checks import is_finite_number, is_int, unknown_fields

POISSON = "poisson"
SHUFFLE = "shuffle"
SAMPLING_METHODS = (POISSON, SHUFFLE)

# What the accountants handle (see accounting.py; measured with dp_accounting 0.6): a noise
# multiplier of 0 (explicitly non-private) or in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER], and
# at most MAX_STEPS noisy steps. Below 0.05 no run is private in any sense (epsilon in the
# thousands) and the PLD accountant needs tens of GB; above 1000 RDP's conversion is numerically
# unstable; beyond 10^7 steps PLD takes minutes and floats run out (10^20 steps overflow).
MIN_NOISE_MULTIPLIER = 0.05
MAX_NOISE_MULTIPLIER = 1000.0
MAX_STEPS = 10_000_000


def _require(condition: bool, field: str, allowed: str, value: Any) -> None:
  if not condition:
    raise ValueError(f"DPConfig.{field} must be {allowed}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """How to train with DP-SGD.

  Attributes:
    l2_norm_clip: C, the L2 norm each example's (or microbatch's) gradient is clipped to. > 0.
    noise_multiplier: sigma = noise std / C, in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]
      (0.05 to 1000). 0 means an explicit non-private baseline (epsilon is infinite). Leave None
      and give `target_epsilon` to have sigma calibrated.
    target_epsilon: calibrate sigma so that epsilon(delta) after all steps is at most this: the
      total of the ledger, i.e. with every run already recorded in the ledger or ledger history
      the run continues (a first run has the whole target; later ones what is left of it).
    delta: the delta of the (epsilon, delta) guarantee; None means 1/N (the usual rule is < 1/N,
      so a report flags it) -- set it explicitly for policies.
    batch_size: the expected logical batch size B; Poisson sampling uses q = B / N.
    epochs: passes over the data; steps = floor(epochs * N / B). Give epochs or steps.
    steps: the number of noisy steps (logical batches), at most MAX_STEPS (10^7).
    num_microbatches: None (default) or 1 clips every example's gradient (sensitivity C). K > 1
      splits each logical batch into K microbatches by an independent random draw per example and
      clips each microbatch's mean gradient (sensitivity 2C, which the accounting uses, whatever
      K and B: a microbatch of expected size B/K < 2 still counts 2C).
    sampling: "poisson" (default; what the accountant assumes) or "shuffle" (fixed-size batches
      of a shuffled pass; the ledger records it and the epsilon is then not a rigorous bound).
    physical_batch_size: examples processed at once (memory bound). None picks one large enough
      for almost every Poisson batch; larger samples are processed in several physical batches and
      accumulated, never truncated.
    seed: fixes sampling and noise for reproducible tests. None (default) draws fresh entropy per
      run; never reuse a seed across runs that are meant to be private.
  """

  l2_norm_clip: float = 1.0
  noise_multiplier: Optional[float] = None
  target_epsilon: Optional[float] = None
  delta: Optional[float] = None
  batch_size: int = 256
  epochs: Optional[float] = None
  steps: Optional[int] = None
  num_microbatches: Optional[int] = None
  sampling: str = POISSON
  physical_batch_size: Optional[int] = None
  seed: Optional[int] = None

  def __post_init__(self):
    _require(
      is_finite_number(self.l2_norm_clip) and self.l2_norm_clip > 0,
      "l2_norm_clip",
      "a finite number > 0",
      self.l2_norm_clip,
    )
    if self.noise_multiplier is None and self.target_epsilon is None:
      raise ValueError(
        "DPConfig needs noise_multiplier (>= 0) or target_epsilon (> 0); got neither"
      )
    if self.noise_multiplier is not None and self.target_epsilon is not None:
      raise ValueError("DPConfig takes noise_multiplier or target_epsilon, not both")
    if self.noise_multiplier is not None:
      _require(
        is_finite_number(self.noise_multiplier)
        and (
          self.noise_multiplier == 0
          or MIN_NOISE_MULTIPLIER <= self.noise_multiplier <= MAX_NOISE_MULTIPLIER
        ),
        "noise_multiplier",
        f"0 (no noise, not private) or a number in "
        f"[{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}] (what the accountants "
        "handle)",
        self.noise_multiplier,
      )
    if self.target_epsilon is not None:
      _require(
        is_finite_number(self.target_epsilon) and self.target_epsilon > 0,
        "target_epsilon",
        "a finite number > 0",
        self.target_epsilon,
      )
    if self.delta is not None:
      _require(
        is_finite_number(self.delta) and 0 < self.delta < 1, "delta", "in (0, 1)", self.delta
      )
    _require(
      is_int(self.batch_size) and self.batch_size >= 1,
      "batch_size",
      "an integer >= 1",
      self.batch_size,
    )
    if (self.epochs is None) == (self.steps is None):
      raise ValueError(
        "DPConfig needs exactly one of epochs (> 0) or steps (>= 1); got "
        f"epochs={self.epochs!r}, steps={self.steps!r}"
      )
    if self.epochs is not None:  # steps >= epochs, as B <= N: more would exceed MAX_STEPS
      _require(
        is_finite_number(self.epochs) and 0 < self.epochs <= MAX_STEPS,
        "epochs",
        f"a number in (0, {MAX_STEPS:,}]",
        self.epochs,
      )
    if self.steps is not None:
      _require(
        is_int(self.steps) and 1 <= self.steps <= MAX_STEPS,
        "steps",
        f"an integer in [1, {MAX_STEPS:,}] (what the accountants handle)",
        self.steps,
      )
    if self.num_microbatches is not None:
      _require(
        is_int(self.num_microbatches) and self.num_microbatches >= 1,
        "num_microbatches",
        "None or an integer >= 1",
        self.num_microbatches,
      )
    _require(
      self.sampling in SAMPLING_METHODS, "sampling", f"one of {SAMPLING_METHODS}", self.sampling
    )
    if self.physical_batch_size is not None:
      _require(
        is_int(self.physical_batch_size) and self.physical_batch_size >= 1,
        "physical_batch_size",
        "None or an integer >= 1",
        self.physical_batch_size,
      )
    if self.seed is not None:
      _require(
        is_int(self.seed) and 0 <= self.seed < 2**63,
        "seed",
        "None or an integer in [0, 2**63)",
        self.seed,
      )

  @property
  def per_example_clipping(self) -> bool:
    return self.num_microbatches is None or self.num_microbatches == 1

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "DPConfig":
    """Builds a config from a dict (e.g. a TFX exec property); unknown keys are an error."""
    error = unknown_fields(cls, values, "DPConfig")
    if error:
      raise error
    return cls(**values)

  @classmethod
  def from_json(cls, text: str) -> "DPConfig":
    try:
      values = json.loads(text)
    except json.JSONDecodeError as error:
      raise ValueError(f"DPConfig JSON does not parse: {error}") from None
    if not isinstance(values, dict):
      raise ValueError("DPConfig JSON must be an object")
    return cls.from_dict(values)
