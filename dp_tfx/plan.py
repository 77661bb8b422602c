"""The training plan: the one frozen object that fixes what the privacy guarantee depends on.

Built once from a `DPConfig` and the dataset size; the sampler, the Keras model, the ledger and the
accounting all read it, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import dp_accounting

from dp_tfx import accounting, calibration
from dp_tfx.config import MAX_STEPS, POISSON, DPConfig


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
  """Which examples each step takes: the part of a plan that batch generation needs (PoissonBatchGen
  draws every step's sample from it, before any noise is chosen).

  Attributes:
    dataset_size: N, the number of privacy units (examples) in the training data.
    batch_size: the expected logical batch size B.
    sampling_rate: q = B / N.
    steps: the number of noisy steps planned.
    physical_batch_size: examples processed at once.
  """

  dataset_size: int
  batch_size: int
  sampling_rate: float
  steps: int
  physical_batch_size: int

  @classmethod
  def from_config(cls, config: DPConfig, dataset_size: int) -> "SamplingPlan":
    """Resolves a config's batch size, epochs or steps and physical batch against the data.

    Raises:
      ValueError: if the config does not fit the data (e.g. a batch larger than the dataset).
    """
    if not isinstance(dataset_size, int) or dataset_size < 1:
      raise ValueError(f"the training data must hold at least one example; got {dataset_size!r}")
    if config.batch_size > dataset_size:
      raise ValueError(
        f"DPConfig.batch_size ({config.batch_size}) is larger than the dataset "
        f"({dataset_size} examples)"
      )
    sampling_rate = config.batch_size / dataset_size
    steps = config.steps or accounting.steps_for_epochs(
      config.epochs, dataset_size, config.batch_size
    )
    if steps > MAX_STEPS:
      raise ValueError(
        f"DPConfig.epochs ({config.epochs:g}) gives {steps:.3g} noisy steps on "
        f"{dataset_size} examples at batch_size {config.batch_size}, more than the "
        f"{MAX_STEPS:,} the accountants handle"
      )
    return cls(
      dataset_size=dataset_size,
      batch_size=config.batch_size,
      sampling_rate=sampling_rate,
      steps=steps,
      physical_batch_size=config.physical_batch_size
      or default_physical_batch_size(config.batch_size, sampling_rate, config.sampling),
    )


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
  """DP-SGD as it will run on a dataset of `dataset_size` examples.

  Attributes:
    dataset_size: N, the number of privacy units (examples) in the training data.
    batch_size: the expected logical batch size B.
    sampling_rate: q = B / N.
    steps: the number of noisy steps planned.
    noise_multiplier: sigma (calibrated when the config gave target_epsilon).
    l2_norm_clip: C.
    num_microbatches: None for per-example clipping, else K.
    sampling: "poisson" or "shuffle".
    physical_batch_size: examples processed at once.
    delta: the delta that the plan's epsilon refers to.
  """

  dataset_size: int
  batch_size: int
  sampling_rate: float
  steps: int
  noise_multiplier: float
  l2_norm_clip: float
  num_microbatches: Optional[int]
  sampling: str
  physical_batch_size: int
  delta: float

  @classmethod
  def from_config(
    cls,
    config: DPConfig,
    dataset_size: int,
    accountant: str = accounting.PLD,
    spent: Optional[dp_accounting.DpEvent] = None,
  ) -> "TrainingPlan":
    """Resolves a config against the data: q, steps, sigma and the physical batch size.

    `spent` is what the ledger already records for the data source: a target_epsilon is then
    the total's, and sigma is calibrated for what is left of it.

    Raises:
      ValueError: if the config does not fit the data (e.g. a batch larger than the dataset).
    """
    sampling = SamplingPlan.from_config(config, dataset_size)
    if config.num_microbatches is not None and config.num_microbatches > config.batch_size:
      raise ValueError(
        f"DPConfig.num_microbatches ({config.num_microbatches}) exceeds "
        f"batch_size ({config.batch_size})"
      )
    delta = config.delta if config.delta is not None else 1.0 / dataset_size
    noise_multiplier = config.noise_multiplier
    if noise_multiplier is None:
      noise_multiplier = calibration.calibrate_noise_multiplier(
        target_epsilon=config.target_epsilon,
        delta=delta,
        sampling_rate=sampling.sampling_rate,
        steps=sampling.steps,
        num_microbatches=config.num_microbatches,
        accountant=accountant,
        spent=spent,
      )
    return cls(
      **dataclasses.asdict(sampling),
      noise_multiplier=float(noise_multiplier),
      l2_norm_clip=float(config.l2_norm_clip),
      num_microbatches=None if config.per_example_clipping else config.num_microbatches,
      sampling=config.sampling,
      delta=delta,
    )

  @property
  def steps_per_epoch(self) -> int:
    """Logical steps shown as one epoch by the progress bar: ceil(N / B)."""
    return max(1, math.ceil(self.dataset_size / self.batch_size))

  @property
  def expected_clipping_units(self) -> float:
    """What the noisy sum is divided by: q*N examples, or K microbatches."""
    return float(self.num_microbatches or self.batch_size)

  def dp_event(self, steps: Optional[int] = None) -> dp_accounting.DpEvent:
    """The DpEvent of this plan after `steps` noisy steps (default: all planned steps)."""
    return accounting.dp_sgd_event(
      self.sampling_rate,
      self.noise_multiplier,
      self.steps if steps is None else steps,
      self.num_microbatches,
    )

  @property
  def sensitivity_multiplier(self) -> int:
    """1: per-example clipping (sensitivity C); 2: microbatches of any size > 1 (2C)."""
    return accounting.sensitivity_multiplier(self.num_microbatches)

  def epsilon(self, accountant: str = accounting.PLD, steps: Optional[int] = None) -> float:
    """epsilon(delta) after `steps` steps; inf where it cannot be bounded (never lower)."""
    return self.epsilon_result(accountant, steps).epsilon

  def epsilon_result(
    self, accountant: str = accounting.PLD, steps: Optional[int] = None
  ) -> accounting.EpsilonResult:
    """epsilon(delta) with the reason when it is infinite."""
    return accounting.epsilon_result(self.dp_event(steps), self.delta, accountant)


def default_physical_batch_size(batch_size: int, sampling_rate: float, sampling: str) -> int:
  """A physical batch that holds a Poisson batch 4 standard deviations above its mean.

  Larger samples (probability ~3e-5 per step) are split over several physical batches, never
  truncated. Rounded up to a multiple of 8 so accelerators get friendly shapes.
  """
  if sampling != POISSON:
    return batch_size
  spread = 4.0 * math.sqrt(batch_size * (1.0 - sampling_rate))
  return int(8 * math.ceil((batch_size + spread) / 8))
