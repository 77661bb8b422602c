"""Keys for TensorFlow's stateless RNGs: one secret key per run, one derived key per stream.

Sampling, noise and microbatch assignment each draw from their own stream of the run key, and
every draw folds in what makes it unique (the step, the replica, the draw): no two draws share
randomness, a resumed run draws exactly what an uninterrupted one would, and a test can fix the
run key (a seed) to reproduce a run.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Optional

import tensorflow as tf

NOISE_STREAM = 1
SAMPLING_STREAM = 2
MICROBATCH_STREAM = 3


def run_key(seed: Optional[int]) -> tf.Tensor:
  """A [2] int64 key for stateless RNGs: from `seed` for tests, else fresh OS entropy."""
  value = secrets.randbits(63) if seed is None else seed
  return tf.constant([value, 0x5EED_D9_7F], dtype=tf.int64)


def text_word(text: str) -> int:
  """A 63-bit word of sha256(text), to fold a name (a run id) into a key."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def stream_key(key: tf.Tensor, *path) -> tf.Tensor:
  """Derives an independent key for (stream, step, ...) by folding each value in."""
  for value in path:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
  return key
