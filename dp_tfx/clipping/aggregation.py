"""Clipping and summing per-example (or per-microbatch) gradients: the DP-SGD aggregation."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from dp_tfx.clipping.gradients import PerExampleGradients, squared_row_norms, zero_rows

# Guards the division C / norm for an all-zero gradient (padded slots).
NORM_EPSILON = 1e-12


def clip_factors(squared_norms: tf.Tensor, l2_norm_clip: float) -> tf.Tensor:
  """min(1, C / ||g||): scales each gradient to norm at most C."""
  norms = tf.sqrt(squared_norms)
  return tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, NORM_EPSILON))


def per_example_clipped_sum(
  grads: PerExampleGradients, mask: tf.Tensor, l2_norm_clip: float
) -> list:
  """sum_b mask_b * clip(g_b, C) for every trainable variable (see clipped_sum_and_kept)."""
  return clipped_sum_and_kept(grads, mask, l2_norm_clip)[0]


def clipped_sum_and_kept(grads: PerExampleGradients, mask: tf.Tensor, l2_norm_clip: float) -> tuple:
  """(sum_b mask_b * clip(g_b, C) for every trainable variable, where a unit whose gradient
  norm is NaN or infinite contributes exactly zero; the [B] mask of the units kept)."""

  def clipped_sum(grads, squared_norms):
    finite = tf.math.is_finite(squared_norms)
    kept = tf.where(finite, tf.cast(mask, grads.losses.dtype), 0.0)
    factors = tf.where(finite, clip_factors(squared_norms, l2_norm_clip), 0.0) * kept
    return grads.weighted_sum(factors), kept

  # The common batch pays one reduction over its norms; one with a NaN or infinite norm (a
  # padding slot's included) takes its sum again without those units.
  squared_norms = grads.squared_norms()
  return tf.cond(
    tf.reduce_all(tf.math.is_finite(squared_norms)),
    lambda: clipped_sum(grads, squared_norms),
    lambda: clipped_sum(*grads.without_nonfinite_units()),
  )


def microbatch_sums(
  grads: PerExampleGradients, mask: tf.Tensor, microbatch_ids: tf.Tensor, num_microbatches: int
) -> tuple:
  """Per-microbatch gradient sums [K, ...] and example counts [K] of one physical batch, and
  the mask of the examples kept: an example whose gradient norm is NaN or infinite is in no
  microbatch (neither its sum nor its count), as if it were not in the batch."""

  def sums_and_counts(per_example, squared_norms):
    kept = tf.where(tf.math.is_finite(squared_norms), tf.cast(mask, grads.losses.dtype), 0.0)
    sums = [
      tf.math.unsorted_segment_sum(
        g * tf.reshape(kept, [-1] + [1] * (g.shape.rank - 1)), microbatch_ids, num_microbatches
      )
      for g in per_example
    ]
    counts = tf.math.unsorted_segment_sum(kept, microbatch_ids, num_microbatches)
    return sums, counts, kept

  def without_nonfinite_units():
    zeroed, squared_norms = grads.without_nonfinite_units()
    return sums_and_counts(zeroed.materialize(), squared_norms)

  per_example = grads.materialize()
  squared_norms = squared_row_norms(per_example, grads.losses)
  return tf.cond(
    tf.reduce_all(tf.math.is_finite(squared_norms)),
    lambda: sums_and_counts(per_example, squared_norms),
    without_nonfinite_units,
  )


def clipped_microbatch_sum(
  sums: Sequence[tf.Tensor], counts: tf.Tensor, l2_norm_clip: float
) -> list:
  """sum_k clip(mean gradient of microbatch k, C); empty microbatches, and those whose mean's
  norm overflows, contribute nothing."""
  inverse = tf.math.divide_no_nan(tf.ones_like(counts), counts)
  means = [s * tf.reshape(inverse, [-1] + [1] * (s.shape.rank - 1)) for s in sums]
  squared = squared_row_norms(means, counts)
  finite = tf.math.is_finite(squared)
  factors = tf.where(finite, clip_factors(squared, l2_norm_clip), 0.0)
  return [tf.tensordot(factors, zero_rows(finite, m), axes=1) for m in means]
