"""Poisson batches drawn ahead, in files: what PoissonBatchGen writes and a streaming trainer reads.

For data larger than one machine's memory the Poisson samples of all steps are drawn on Beam, as
Chua et al. do ("Scalable DP-SGD: Shuffling vs. Poisson Subsampling", NeurIPS 2024): a Map draws,
for each example, the steps whose sample includes it; a group-by-step collects each step's sample;
each sample is padded. Each example joins each step independently with probability q, drawn as
geometric gaps between its inclusions (`inclusion_steps`: O(expected inclusions), not O(steps)).

A step's record holds its sample, then masked copies of a padding example up to a whole number of
physical batches (at least one: a step with an empty sample still adds its noise). Nothing is
truncated. Steps are written in order, a record each, in TFRecord shards of consecutive steps
(memory to read one: a step's sample); the manifest
(`BatchManifest`) records the facts the accountant needs (N, q, steps) and each shard's digest.
The sampling randomness comes from the OS and is written nowhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from dp_tfx import files
from dp_tfx.checks import is_finite_number, is_int, unknown_fields

MANIFEST_FILE = "poisson_batches.json"
FORMAT_VERSION = 1
# A step's record (a tf.Example): its number, its slots (the sampled examples as the Examples
# artifact holds them, serialized, then copies of the padding example) and their mask (1 for a
# sampled example, 0 for padding).
STEP_FEATURE = "dp_tfx_step"
EXAMPLES_FEATURE = "dp_tfx_examples"
MASK_FEATURE = "dp_tfx_mask"
RECORD_SPEC = {STEP_FEATURE: tf.io.FixedLenFeature([], tf.int64),
               EXAMPLES_FEATURE: tf.io.RaggedFeature(tf.string),
               MASK_FEATURE: tf.io.RaggedFeature(tf.int64)}


def inclusion_steps(rng: np.random.Generator, sampling_rate: float, first_step: int,
                    last_step: int) -> np.ndarray:
  """The steps in [first_step, last_step) whose Poisson sample includes one example.

  Each step includes it independently with probability `sampling_rate`: the gap from one
  inclusion to the next is geometric (memoryless), so drawing the gaps takes work proportional to
  the inclusions, q (last - first) on average, and a range of steps can be drawn on its own.
  """
  if not (is_finite_number(sampling_rate) and 0 < sampling_rate <= 1):
    raise ValueError(f"the sampling rate must be in (0, 1]; got {sampling_rate!r}")
  found, position = [], first_step - 1
  block = int(sampling_rate * (last_step - first_step) * 1.25) + 8
  while position < last_step - 1:
    positions = position + np.cumsum(rng.geometric(sampling_rate, size=block))
    found.append(positions[positions < last_step])
    position = int(positions[-1])
  return np.concatenate(found) if found else np.zeros([0], np.int64)


def step_record(step: int, sample: Sequence[bytes], physical_batch_size: int,
                padding_example: bytes) -> bytes:
  """A step's record: its sample, then masked padding up to whole physical batches (>= 1)."""
  slots = max(1, math.ceil(len(sample) / physical_batch_size)) * physical_batch_size
  padding = slots - len(sample)
  feature = tf.train.Feature
  return tf.train.Example(features=tf.train.Features(feature={
      STEP_FEATURE: feature(int64_list=tf.train.Int64List(value=[step])),
      EXAMPLES_FEATURE: feature(bytes_list=tf.train.BytesList(
          value=list(sample) + [padding_example] * padding)),
      MASK_FEATURE: feature(int64_list=tf.train.Int64List(value=[1] * len(sample) +
                                                          [0] * padding)),
  })).SerializeToString()


def parse_step_record(record: tf.Tensor) -> tuple:
  """(step, [L] serialized examples, [L] float32 mask) of one step's record."""
  parsed = tf.io.parse_single_example(record, RECORD_SPEC)
  return (parsed[STEP_FEATURE], parsed[EXAMPLES_FEATURE],
          tf.cast(parsed[MASK_FEATURE], tf.float32))


@dataclasses.dataclass(frozen=True)
class Shard:
  """One file of consecutive steps [first_step, last_step), a record each: `sampled` examples in
  all (padding aside), and the sha256 of the file's bytes."""

  file: str
  first_step: int
  last_step: int
  sampled: int
  sha256: str

  def __post_init__(self):
    if not (isinstance(self.file, str) and self.file and os.path.basename(self.file) == self.file):
      raise ValueError(f"a shard's file must be a file name in the batches directory; got "
                       f"{self.file!r}")
    if not (is_int(self.first_step) and is_int(self.last_step) and
            0 <= self.first_step < self.last_step):
      raise ValueError(f"shard {self.file}: steps [{self.first_step!r}, {self.last_step!r}) are "
                       f"not a range")
    if not (is_int(self.sampled) and self.sampled >= 0):
      raise ValueError(f"shard {self.file}: sampled must be an int >= 0; got {self.sampled!r}")
    if not (isinstance(self.sha256, str) and len(self.sha256) == 64):
      raise ValueError(f"shard {self.file}: {self.sha256!r} is not a sha256")


@dataclasses.dataclass(frozen=True)
class BatchManifest:
  """What a directory of Poisson batches holds, and the facts of the sampling that drew them.

  Attributes:
    dataset_size: N, the examples the samples were drawn from (counted exactly).
    batch_size: the expected batch size; sampling_rate q = batch_size / N.
    sampling_rate: each example's probability of joining each step.
    steps: the steps of the whole plan (a directory may hold a range of them).
    first_step, last_step: the steps this directory holds, [first_step, last_step).
    physical_batch_size: each step's records are a whole number of these.
    shards: the files, consecutive, covering [first_step, last_step) in order.
  """

  dataset_size: int
  batch_size: int
  sampling_rate: float
  steps: int
  first_step: int
  last_step: int
  physical_batch_size: int
  shards: Tuple[Shard, ...]

  def __post_init__(self):
    for name in ("dataset_size", "batch_size", "steps", "physical_batch_size"):
      if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
        raise ValueError(f"BatchManifest.{name} must be an int >= 1; got {getattr(self, name)!r}")
    if not (is_finite_number(self.sampling_rate) and
            self.sampling_rate == self.batch_size / self.dataset_size):
      raise ValueError(f"BatchManifest.sampling_rate {self.sampling_rate!r} is not batch_size / "
                       f"dataset_size = {self.batch_size} / {self.dataset_size}")
    if not (is_int(self.first_step) and is_int(self.last_step) and
            0 <= self.first_step < self.last_step <= self.steps):
      raise ValueError(f"BatchManifest steps [{self.first_step!r}, {self.last_step!r}) are not a "
                       f"range within the plan's {self.steps} steps")
    covered = self.first_step
    for shard in self.shards:
      if shard.first_step != covered:
        raise ValueError(f"BatchManifest: shard {shard.file} starts at step {shard.first_step}, "
                         f"not at {covered}")
      covered = shard.last_step
    if covered != self.last_step:
      raise ValueError(f"BatchManifest: the shards end at step {covered}, not at "
                       f"{self.last_step}")

  def to_dict(self) -> dict:
    values = dataclasses.asdict(self)
    return {"format_version": FORMAT_VERSION, **values, "shards": list(values["shards"])}

  @classmethod
  def from_dict(cls, values: dict) -> "BatchManifest":
    values = dict(values)
    if values.pop("format_version", None) != FORMAT_VERSION:
      raise ValueError(f"unsupported Poisson batches format; this dp_tfx reads version "
                       f"{FORMAT_VERSION}")
    error = unknown_fields(cls, values, "BatchManifest")
    if error is not None:
      raise error
    shards = values.pop("shards")
    if not isinstance(shards, list):
      raise ValueError(f"BatchManifest.shards must be a list; got {shards!r}")
    return cls(**values, shards=tuple(Shard(**shard) for shard in shards))

  def digest(self) -> str:
    """sha256 of the manifest's canonical JSON: names these batches (and, through the shards'
    digests, their every byte) in a ledger."""
    canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

  def save(self, directory) -> str:
    return files.write_text(os.path.join(os.fspath(directory), MANIFEST_FILE),
                            json.dumps(self.to_dict(), indent=2, sort_keys=True))

  @classmethod
  def load(cls, directory) -> "BatchManifest":
    """Reads `{directory}/poisson_batches.json`; anything missing or malformed raises
    ValueError."""
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    try:
      return cls.from_dict(json.loads(files.read_text(path)))
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError) as error:
      raise ValueError(f"cannot read the Poisson batches manifest at {path}: {error}") from None


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes (any tf.io.gfile filesystem), read in blocks."""
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as stream:
    for block in iter(lambda: stream.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def shard_name(first_step: int, last_step: int) -> str:
  return f"steps-{first_step:09d}-{last_step:09d}.tfrecord.gz"


def write_shard(directory: str, first_step: int, last_step: int,
                samples: dict, physical_batch_size: int, padding_example: bytes) -> Shard:
  """Writes steps [first_step, last_step) in order, a record each (`samples`: step -> its
  sampled examples; a step missing from it sampled none)."""
  name = shard_name(first_step, last_step)
  path = os.path.join(directory, name)
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for step in range(first_step, last_step):
      writer.write(step_record(step, samples.get(step, ()), physical_batch_size,
                               padding_example))
  return Shard(file=name, first_step=first_step, last_step=last_step,
               sampled=sum(len(samples.get(step, ())) for step in range(first_step, last_step)),
               sha256=file_sha256(path))
