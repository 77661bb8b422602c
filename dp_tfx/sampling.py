"""Batch selection for DP-SGD: Poisson sampling (the default) or shuffled fixed-size batches.

Each logical step is one element of a tf.data pipeline: the selected examples gathered from
in-memory tensors, padded to a whole number of physical batches, with a mask (1 = real example,
0 = padding) in the place of Keras's sample weights. Microbatch assignments are drawn per slot
by `microbatch_assignment`, in the train step. Padding keeps shapes static for XLA; the mask
makes padded slots contribute exactly nothing. A sample larger than one physical batch simply
spans several (the trainer accumulates them); nothing is truncated.

Selection uses stateless RNGs keyed by (run key, step), so resuming at step s draws exactly what
an uninterrupted run would have drawn, and no two steps share randomness.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from dp_tfx import keys
from dp_tfx.config import POISSON


def poisson_indices(
  key: tf.Tensor, step: tf.Tensor, dataset_size: int, sampling_rate: float
) -> tf.Tensor:
  """Indices of the examples in step `step`: each included independently with probability q."""
  uniform = tf.random.stateless_uniform(
    [dataset_size], seed=keys.stream_key(key, keys.SAMPLING_STREAM, step), dtype=tf.float64
  )
  return tf.cast(tf.where(uniform < sampling_rate)[:, 0], tf.int32)


def shuffled_indices(
  key: tf.Tensor, step: tf.Tensor, dataset_size: int, batch_size: int
) -> tf.Tensor:
  """Fixed-size batches of a fresh random permutation per epoch (not what the accountant
  assumes)."""
  steps_per_epoch = dataset_size // batch_size
  epoch = step // steps_per_epoch
  position = step % steps_per_epoch
  permutation = tf.random.experimental.stateless_shuffle(
    tf.range(dataset_size), seed=keys.stream_key(key, keys.SAMPLING_STREAM, epoch)
  )
  return permutation[position * batch_size : (position + 1) * batch_size]


def pad_indices(indices: tf.Tensor, multiple: int):
  """Pads indices to a multiple of `multiple` (at least one multiple): (indices, mask)."""
  count = tf.shape(indices)[0]
  chunks = tf.maximum(1, (count + multiple - 1) // multiple)
  padding = chunks * multiple - count
  padded = tf.concat([indices, tf.zeros([padding], tf.int32)], axis=0)
  mask = tf.concat([tf.ones([count]), tf.zeros([padding])], axis=0)
  return padded, mask


def microbatch_assignment(
  key: tf.Tensor, step, slots: tf.Tensor, num_microbatches: int
) -> tf.Tensor:
  """Microbatch ids for the `slots` slots of step `step`'s logical batch: one independent uniform
  draw in [0, num_microbatches) per slot, from a stream of their own (MICROBATCH_STREAM).

  The draws belong to batch slots, not to examples. The selected examples fill the slots in the
  order of the sample (dataset order under Poisson sampling), padding fills the rest (mask 0: it
  counts in no microbatch). So for a fixed key, adding or removing one example shifts every
  later example into the next or previous slot, and usually into another microbatch: on fixed
  randomness, many microbatches can change, not one.

  What holds, and what invariant 3 (docs/architecture.md) and the accountant's sensitivity 2C need,
  is a statement about distributions. The draws are i.i.d. and independent of the data, of which
  examples were sampled (another stream) and of the noise; the sample fixes which example sits in
  which slot, a one-to-one map, and i.i.d. draws mapped one-to-one onto the sampled examples are
  again i.i.d. So, whatever the sample, the sampled examples' microbatches are distributed exactly
  as if each example drew its own, and the training step has the same output distribution as that
  mechanism. There, coupling the draws of the examples common to two neighbouring datasets, adding
  or removing one example changes exactly one microbatch: its clipped mean moves from one vector of
  norm <= C to another (or appears or vanishes, <= C), sensitivity 2C
  (accounting.sensitivity_multiplier); replacing one example also changes one microbatch, <= 2C.
  Assignment by position (slot i to microbatch i mod K) would lack this: given the sample it is
  deterministic, so one added example regroups every example after it.
  """
  return tf.random.stateless_uniform(
    [slots],
    seed=keys.stream_key(key, keys.MICROBATCH_STREAM, step),
    maxval=num_microbatches,
    dtype=tf.int32,
  )


def logical_batches(
  features,
  labels,
  plan,
  key: tf.Tensor,
  first_step: int,
  last_step: int,
  pad_multiple: Optional[int] = None,
  step_noise: Optional[Callable[[tf.Tensor], list]] = None,
) -> tf.data.Dataset:
  """The dataset of logical steps [first_step, last_step) for `plan` (a TrainingPlan).

  Elements are (features, labels, mask [L]) with L a multiple of
  `pad_multiple`: by default plan.physical_batch_size, the static shapes XLA wants. Without XLA a
  small multiple saves computing on padding (a Poisson batch of mean 256 pads to 320). With
  `step_noise` (step -> the step's noise tensors) elements carry the step's noise too: drawn by
  the input pipeline while the previous step trains.
  """
  features = tf.nest.map_structure(tf.convert_to_tensor, features)
  labels = tf.convert_to_tensor(labels)

  def select(step):
    if plan.sampling == POISSON:
      indices = poisson_indices(key, step, plan.dataset_size, plan.sampling_rate)
    else:
      indices = shuffled_indices(key, step, plan.dataset_size, plan.batch_size)
    indices, mask = pad_indices(indices, pad_multiple or plan.physical_batch_size)
    gather = lambda tensor: tf.gather(tensor, indices)
    return tf.nest.map_structure(gather, features), gather(labels), mask

  batches = tf.data.Dataset.range(first_step, last_step).map(
    select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
  )
  return with_step_noise(batches, first_step, last_step, step_noise).prefetch(tf.data.AUTOTUNE)


def with_step_noise(
  batches: tf.data.Dataset,
  first_step: int,
  last_step: int,
  step_noise: Optional[Callable[[tf.Tensor], list]],
) -> tf.data.Dataset:
  """The steps' elements (features, labels, mask), each with its step's noise tensors appended
  when `step_noise` is given: drawn by the input pipeline while the previous step trains."""
  if step_noise is None:
    return batches
  # A tuple: tf.data would stack a list into one tensor.
  return tf.data.Dataset.zip((batches, tf.data.Dataset.range(first_step, last_step))).map(
    lambda batch, step: (*batch, tuple(step_noise(step))),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )


def replica_slices(
  batches: tf.data.Dataset, steps: int, replicas: int, first: int = 0, count: Optional[int] = None
) -> tf.data.Dataset:
  """Each logical batch cut into `replicas` equal slices, and of those the `count` (default: all)
  from slice `first` on, in turn: a worker's share for its own replicas (Keras's
  distribute_datasets_from_function hands each worker's consecutive elements to its replicas
  in turn).

  All slices of a step share that step's sample and mask, so the replicas' clipped sums (and
  their independent noise, sigma^2 C^2 / R each) add up to exactly one DP-SGD step. The asserted
  length lets Keras stop at the last step instead of starting one more.
  """
  count = replicas - first if count is None else count

  def per_replica(*element):
    split = lambda t: tf.reshape(t, [replicas, -1, *t.shape[1:]])[first : first + count]
    return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(split, element))

  return batches.flat_map(per_replica).apply(tf.data.experimental.assert_cardinality(steps * count))
