"""Gaussian noise for DP-SGD: fresh every step, independent per variable and per replica.

Noise is drawn with TensorFlow's counter-based stateless RNG from (run key, step, replica), so
no two steps or replicas ever share a stream, it runs under XLA, and a test can fix the run key to
reproduce it. One draw covers all variables (each takes its own slice of it): a draw per variable
cost more in per-op overhead than in sampling (CNN step at batch 256: ~3 ms against ~0.5 ms).
With R replicas each adds N(0, sigma^2 C^2 / R): the summed gradient then carries exactly one
N(0, sigma^2 C^2) draw's variance.
"""

from __future__ import annotations

import secrets
from typing import Optional, Sequence

import tensorflow as tf

NOISE_STREAM = 1
SAMPLING_STREAM = 2
MICROBATCH_STREAM = 3


def run_key(seed: Optional[int]) -> tf.Tensor:
  """A [2] int64 key for stateless RNGs: from `seed` for tests, else fresh OS entropy."""
  value = secrets.randbits(63) if seed is None else seed
  return tf.constant([value, 0x5EED_D9_7F], dtype=tf.int64)


def stream_key(key: tf.Tensor, *path) -> tf.Tensor:
  """Derives an independent key for (stream, step, ...) by folding each value in."""
  for value in path:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
  return key


def add_gaussian_noise(tensors: Sequence[tf.Tensor], stddev: float, key: tf.Tensor,
                       step: tf.Tensor) -> list:
  """tensors[i] + N(0, stddev^2 / R), all from one stream unique to (key, step, replica)."""
  replica_context = tf.distribute.get_replica_context()
  replicas, replica_id = 1, 0
  if replica_context is not None:
    replicas = replica_context.num_replicas_in_sync
    replica_id = replica_context.replica_id_in_sync_group
  per_replica_stddev = stddev / (replicas ** 0.5)
  # Static shapes (variables have them) let the draw start before the gradients are done.
  static = [tensor.shape.is_fully_defined() for tensor in tensors]
  shapes = [t.shape if known else tf.shape(t) for t, known in zip(tensors, static)]
  sizes = [t.shape.num_elements() if known else tf.size(t) for t, known in zip(tensors, static)]
  draw = tf.random.stateless_normal([sum(sizes)], seed=stream_key(
      key, NOISE_STREAM, step, replica_id), dtype=tf.float32)
  slices = tf.split(draw, sizes, num=len(tensors))
  return [tensor + tf.cast(per_replica_stddev * tf.reshape(part, shape), tensor.dtype)
          for tensor, part, shape in zip(tensors, slices, shapes)]
