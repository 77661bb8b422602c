"""The slow, obvious clipped sum that the fast paths are tested against (and users can check their
own models with)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dp_tfx.clipping.aggregation import NORM_EPSILON
from dp_tfx.clipping.gradients import LossFn


def reference_clipped_sum(
  model: keras.Model,
  loss_fn: LossFn,
  x,
  y,
  l2_norm_clip: float,
  mask=None,
  microbatch_ids=None,
  num_microbatches=None,
) -> list:
  """The slow, obvious clipped gradient sum: one example (or microbatch) at a time, eagerly.

  Use it to check that a model's DP gradients are right. Examples with mask 0 are skipped, and
  so are those whose gradient's norm is NaN or infinite (they contribute zero, and are in no
  microbatch). Returns numpy arrays in the order of `model.trainable_variables`.
  """
  batch = len(y)
  mask = np.ones(batch) if mask is None else np.asarray(mask)
  take = lambda data, rows: tf.nest.map_structure(lambda t: tf.gather(t, rows), data)

  def gradient(rows):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(loss_fn(take(y, rows), model(take(x, rows), training=True)))
    grads = [
      np.asarray(tf.convert_to_tensor(g), np.float64)
      for g in tape.gradient(loss, model.trainable_variables)
    ]
    return grads, np.sqrt(sum(np.sum(g * g) for g in grads))

  finite = [b for b in range(batch) if mask[b] and np.isfinite(gradient([b])[1])]
  if num_microbatches is None:
    groups = [[b] for b in finite]
  else:
    ids = np.asarray(microbatch_ids)
    groups = [[b for b in finite if ids[b] == k] for k in range(num_microbatches)]
    groups = [group for group in groups if group]
  total = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
  for rows in groups:
    grads, norm = gradient(rows)
    if np.isfinite(norm):
      factor = min(1.0, l2_norm_clip / max(norm, NORM_EPSILON))
      total = [t + factor * g for t, g in zip(total, grads)]
  return total
