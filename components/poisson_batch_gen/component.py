"""PoissonBatchGen: every step's Poisson sample drawn ahead on Beam, for data larger than memory.

The DPTrainer's in-memory path draws each step's sample from arrays of the whole training split.
For data that does not fit, this component draws them on Beam (any runner: the DirectRunner, or
Dataflow, Flink and Spark through beam_pipeline_args), as Chua et al. do ("Scalable DP-SGD:
Shuffling vs. Poisson Subsampling", NeurIPS 2024): each example joins each step independently
with probability q = batch_size / N, drawn as geometric gaps between its inclusions; the draws are
grouped by step and each step's sample is padded, with a mask, to whole physical batches. Nothing
is truncated. The randomness comes from the OS on each worker and is written nowhere.

Disk: the batches hold every sampled example once per inclusion, about epochs x the training
split, plus padding (a physical batch is about 4 standard deviations above the mean batch); use
first_step/last_step to write a range of steps at a time.

Inputs:
  examples: the Examples to train on (its train_split).
Parameters:
  dp_config: the DPTrainer's dp_tfx.DPConfig: batch_size, epochs or steps and
    physical_batch_size fix q, the steps and the padding exactly as the DPTrainer plans them.
  train_split: the split to sample (default "train").
  first_step, last_step: the range of steps to write (default: all the plan's steps).
  steps_per_shard: consecutive steps per TFRecord file (default: about 100,000 examples).
Outputs:
  poisson_batches: TFRecord shards of step records (dp_tfx.poisson_batches) and
    poisson_batches.json, the manifest: N, q, steps, physical batch, each shard's sha256. Custom
    properties: dataset_size, sampling_rate, steps, first_step, last_step, manifest_digest.

Example:
  batches = PoissonBatchGen(examples=example_gen.outputs["examples"], dp_config=config)
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec

from dp_tfx.checks import is_int
from dp_tfx.components import artifacts
from dp_tfx.components.model_io import TRAIN_SPLIT
from dp_tfx.components.poisson_batch_gen import executor
from dp_tfx.components.specs import PoissonBatchGenSpec
from dp_tfx.config import POISSON, DPConfig


class PoissonBatchGen(base_beam_component.BaseBeamComponent):
  """A TFX component that writes every step's Poisson sample, padded. See module doc."""

  SPEC_CLASS = PoissonBatchGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(
    self,
    examples: types.BaseChannel,
    dp_config: DPConfig,
    train_split: str = TRAIN_SPLIT,
    first_step: Optional[int] = None,
    last_step: Optional[int] = None,
    steps_per_shard: Optional[int] = None,
  ):
    if not isinstance(dp_config, DPConfig):
      raise TypeError(f"dp_config must be a dp_tfx.DPConfig; got {type(dp_config).__name__}")
    if dp_config.sampling != POISSON:
      raise ValueError(
        f"PoissonBatchGen draws Poisson samples; dp_config.sampling is {dp_config.sampling!r}"
      )
    for name, value, least in (
      ("first_step", first_step, 0),
      ("last_step", last_step, 1),
      ("steps_per_shard", steps_per_shard, 1),
    ):
      if value is not None and not (is_int(value) and value >= least):
        raise ValueError(f"{name} must be None or an int >= {least}; got {value!r}")
    if first_step is not None and last_step is not None and last_step <= first_step:
      raise ValueError(f"last_step ({last_step}) must be above first_step ({first_step})")
    spec = PoissonBatchGenSpec(
      examples=examples,
      dp_config=dp_config.to_json(),
      train_split=train_split,
      first_step=first_step,
      last_step=last_step,
      steps_per_shard=steps_per_shard,
      poisson_batches=types.Channel(type=artifacts.PoissonBatches),
    )
    super().__init__(spec=spec)
