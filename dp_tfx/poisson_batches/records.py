"""A step's record (its sample and masked padding, a tf.Example) and the shards holding them."""

from __future__ import annotations

import math
import os
from typing import Sequence

import tensorflow as tf

from dp_tfx import files
from dp_tfx.poisson_batches.manifest import Shard

# A step's record (a tf.Example): its number, its slots (the sampled examples as the Examples
# artifact holds them, serialized, then copies of the padding example) and their mask (1 for a
# sampled example, 0 for padding).
STEP_FEATURE = "dp_tfx_step"
EXAMPLES_FEATURE = "dp_tfx_examples"
MASK_FEATURE = "dp_tfx_mask"
# Which draw the sample belongs to (see `new_draw`): the samples' identity, whatever files,
# compression or manifest carry them later.
DRAW_FEATURE = "dp_tfx_draw"
RECORD_SPEC = {
  STEP_FEATURE: tf.io.FixedLenFeature([], tf.int64),
  EXAMPLES_FEATURE: tf.io.RaggedFeature(tf.string),
  MASK_FEATURE: tf.io.RaggedFeature(tf.int64),
  DRAW_FEATURE: tf.io.FixedLenFeature([], tf.string),
}


def step_record(
  step: int, sample: Sequence[bytes], physical_batch_size: int, padding_example: bytes, draw: str
) -> bytes:
  """A step's record: its sample, then masked padding up to whole physical batches (>= 1)."""
  slots = max(1, math.ceil(len(sample) / physical_batch_size)) * physical_batch_size
  padding = slots - len(sample)
  feature = tf.train.Feature
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        STEP_FEATURE: feature(int64_list=tf.train.Int64List(value=[step])),
        EXAMPLES_FEATURE: feature(
          bytes_list=tf.train.BytesList(value=list(sample) + [padding_example] * padding)
        ),
        MASK_FEATURE: feature(
          int64_list=tf.train.Int64List(value=[1] * len(sample) + [0] * padding)
        ),
        DRAW_FEATURE: feature(bytes_list=tf.train.BytesList(value=[draw.encode()])),
      }
    )
  ).SerializeToString()


def parse_step_record(record: tf.Tensor) -> tuple:
  """(step, [L] serialized examples, [L] float32 mask, draw) of one step's record."""
  parsed = tf.io.parse_single_example(record, RECORD_SPEC)
  return (
    parsed[STEP_FEATURE],
    parsed[EXAMPLES_FEATURE],
    tf.cast(parsed[MASK_FEATURE], tf.float32),
    parsed[DRAW_FEATURE],
  )


def shard_name(first_step: int, last_step: int) -> str:
  return f"steps-{first_step:09d}-{last_step:09d}.tfrecord.gz"


def write_shard(
  directory: str,
  first_step: int,
  last_step: int,
  samples: dict,
  physical_batch_size: int,
  padding_example: bytes,
  draw: str,
) -> Shard:
  """Writes steps [first_step, last_step) in order, a record each (`samples`: step -> its
  sampled examples; a step missing from it sampled none)."""
  name = shard_name(first_step, last_step)
  path = os.path.join(directory, name)
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for step in range(first_step, last_step):
      writer.write(
        step_record(step, samples.get(step, ()), physical_batch_size, padding_example, draw)
      )
  return Shard(
    file=name,
    first_step=first_step,
    last_step=last_step,
    sampled=sum(len(samples.get(step, ())) for step in range(first_step, last_step)),
    sha256=files.sha256(path),
  )
