"""One DP-SGD step's gradient, as a function of tensors: no Keras model state, no data loading.

For a logical batch (padded to physical chunks, with a mask): per-example gradients clipped to C
(or per-microbatch means, clipped), summed over the chunks, N(0, sigma^2 C^2) noise added (split
across replicas), and the sum divided by the expected batch size. `DPModel.train_step` calls it
and applies the result with the user's optimizer; tests call it directly.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from dp_tfx import clipping, noise, sampling
from dp_tfx.plan import TrainingPlan

# (features, labels, predictions, mask) of one chunk -> None: e.g. Keras's compute_metrics.
ChunkCallback = Callable[[object, tf.Tensor, tf.Tensor, tf.Tensor], None]


def noisy_gradients(
  taps: clipping.GradientTaps,
  loss_fn: clipping.LossFn,
  plan: TrainingPlan,
  features,
  labels: tf.Tensor,
  mask: tf.Tensor,
  key: tf.Tensor,
  step: tf.Tensor,
  static_chunks: bool = False,
  on_chunk: Optional[ChunkCallback] = None,
  step_noise: Optional[list] = None,
) -> tuple:
  """The noisy, averaged DP-SGD gradient of one logical batch (or of this replica's slice of it).

  Args:
    taps: the model's per-example gradient taps.
    loss_fn: (labels, predictions) -> [B] per-example losses.
    plan: the training plan (C, sigma, microbatches, physical batch size, expected batch size).
    features, labels, mask: the logical batch as `sampling.logical_batches` makes it.
    key, step: the run's noise key and the step number (noise and microbatches depend on both).
    static_chunks: slice chunks of static size (under XLA, where batches are padded to whole
      chunks).
    on_chunk: called with each physical chunk's features, labels, predictions and the mask of
      its kept units (the labels and predictions of the others zeroed).
    step_noise: this step's noise, drawn ahead (noise.gaussian_noise with the same key and
      step); by default it is drawn here.

  Returns:
    (gradients in the order of taps.variables, the sum of the kept units' losses, the number of
    units kept: those of mask 1 whose gradient is finite; a unit whose gradient is NaN or
    infinite contributes exactly zero, to the sum as to the loss).
  """
  variables = taps.variables
  # A mask other than 0/1 would weigh an example more than once (its sensitivity above C): such
  # a batch stops the step (the batches' own checks should have refused it earlier), and under
  # XLA, which drops assertions, every slot still weighs 0 or 1.
  checks = [
    tf.debugging.assert_equal(
      mask * (1.0 - mask), tf.zeros_like(mask), message="the mask must be 0 or 1 in every slot"
    )
  ]
  with tf.control_dependencies(checks):
    mask = tf.cast(tf.equal(mask, 1.0), mask.dtype)
  if plan.num_microbatches is not None:
    microbatch_ids = sampling.microbatch_assignment(
      key, step, tf.shape(mask)[0], plan.num_microbatches
    )
  physical = plan.physical_batch_size // tf.distribute.get_replica_context().num_replicas_in_sync
  chunks = (tf.shape(mask)[0] + physical - 1) // physical  # the last one may be partial

  if plan.num_microbatches is None:
    initial = [tf.zeros(v.shape, v.dtype) for v in variables]
  else:
    initial = [tf.zeros([plan.num_microbatches, *v.shape], v.dtype) for v in variables] + [
      tf.zeros([plan.num_microbatches])
    ]

  def window_of(chunk):
    if static_chunks:
      # Under XLA batches are padded to whole chunks, so every chunk has exactly `physical`
      # rows: a slice of static size keeps every shape static (with the bounded dynamic shapes
      # of a plain slice, XLA computed wrong per-example gradients for some convolutions).
      return lambda t: tf.slice(
        t, [chunk * physical] + [0] * (t.shape.rank - 1), [physical, *t.shape[1:]]
      )
    return lambda t: t[chunk * physical : (chunk + 1) * physical]

  def accumulate(chunk, sums, loss_sum, units):
    window = window_of(chunk)
    x, y = tf.nest.map_structure(window, features), window(labels)
    chunk_mask = window(mask)
    grads = taps.backward(x, y, loss_fn, chunk_mask)
    if plan.num_microbatches is None:
      parts, kept = clipping.clipped_sum_and_kept(grads, chunk_mask, plan.l2_norm_clip)
    else:
      part_sums, counts, kept = clipping.microbatch_sums(
        grads, chunk_mask, window(microbatch_ids), plan.num_microbatches
      )
      parts = part_sums + [counts]
    # Units whose gradient is NaN or infinite are left out of the loss and the metrics too.
    kept_rows = tf.equal(kept, 1.0)
    if on_chunk is not None:
      on_chunk(
        x,
        clipping.zero_rows(kept_rows, y),
        tf.nest.map_structure(lambda t: clipping.zero_rows(kept_rows, t), grads.predictions),
        kept,
      )
    # (A unit's loss may be NaN where its gradient is not: a stop_gradient penalty.)
    loss_sum += tf.reduce_sum(
      clipping.zero_rows(tf.logical_and(kept_rows, tf.math.is_finite(grads.losses)), grads.losses)
    )
    return (chunk + 1, [s + p for s, p in zip(sums, parts)], loss_sum, units + tf.reduce_sum(kept))

  # The first chunk outside the loop: almost every Poisson sample fits one physical batch, and
  # a loop body is a scheduling boundary that cost ~20% of a CNN step (noise, updates and the
  # backward pass could not overlap across it).
  first = accumulate(tf.constant(0), initial, tf.constant(0.0), tf.constant(0.0))
  _, sums, loss_sum, units = tf.while_loop(lambda chunk, *_: chunk < chunks, accumulate, first)
  if plan.num_microbatches is not None:
    sums = clipping.clipped_microbatch_sum(sums[:-1], sums[-1], plan.l2_norm_clip)
  if step_noise is None:
    noisy = noise.add_gaussian_noise(sums, plan.noise_multiplier * plan.l2_norm_clip, key, step)
  else:
    noisy = [s + n for s, n in zip(sums, step_noise, strict=True)]
  return [g / plan.expected_clipping_units for g in noisy], loss_sum, units
