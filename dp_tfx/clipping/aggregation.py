"""Clipping and summing per-example (or per-microbatch) gradients: the DP-SGD aggregation."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from dp_tfx.clipping.gradients import PerExampleGradients

# Guards the division C / norm for an all-zero gradient (padded slots).
NORM_EPSILON = 1e-12


def clip_factors(squared_norms: tf.Tensor, l2_norm_clip: float) -> tf.Tensor:
  """min(1, C / ||g||): scales each gradient to norm at most C."""
  norms = tf.sqrt(squared_norms)
  return tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, NORM_EPSILON))


def per_example_clipped_sum(grads: PerExampleGradients, mask: tf.Tensor,
                            l2_norm_clip: float) -> list:
  """sum_b mask_b * clip(g_b, C) for every trainable variable."""
  factors = clip_factors(grads.squared_norms(), l2_norm_clip) * tf.cast(mask, grads.losses.dtype)
  return grads.weighted_sum(factors)


def microbatch_sums(grads: PerExampleGradients, mask: tf.Tensor, microbatch_ids: tf.Tensor,
                    num_microbatches: int):
  """Per-microbatch gradient sums [K, ...] and example counts [K] of one physical batch."""
  weights = tf.cast(mask, grads.losses.dtype)
  sums = [tf.math.unsorted_segment_sum(g * tf.reshape(weights, [-1] + [1] * (g.shape.rank - 1)),
                                       microbatch_ids, num_microbatches)
          for g in grads.materialize()]
  counts = tf.math.unsorted_segment_sum(weights, microbatch_ids, num_microbatches)
  return sums, counts


def clipped_microbatch_sum(sums: Sequence[tf.Tensor], counts: tf.Tensor,
                           l2_norm_clip: float) -> list:
  """sum_k clip(mean gradient of microbatch k, C); empty microbatches contribute nothing."""
  inverse = tf.math.divide_no_nan(tf.ones_like(counts), counts)
  means = [s * tf.reshape(inverse, [-1] + [1] * (s.shape.rank - 1)) for s in sums]
  squared = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(m), [tf.shape(m)[0], -1]), axis=1)
                      for m in means])
  factors = clip_factors(squared, l2_norm_clip)
  return [tf.tensordot(factors, m, axes=1) for m in means]
