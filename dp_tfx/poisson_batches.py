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
import json
import math
import os
import secrets
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from dp_tfx import files, record_digest, sampling, signing
from dp_tfx.canonical import canonical_digest
from dp_tfx.checks import is_finite_number, is_int, unknown_fields
from dp_tfx.config import POISSON

MANIFEST_FILE = "poisson_batches.json"
SIGNATURE_FILE = "poisson_batches.json.sig"
# 2: the manifest records the digest of the data it was drawn from (data_digest).
FORMAT_VERSION = 2
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


def inclusion_steps(
  rng: np.random.Generator, sampling_rate: float, first_step: int, last_step: int
) -> np.ndarray:
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


def new_draw(first_step: int, last_step: int) -> str:
  """A fresh draw's identity: random, with the steps it covers. Every record of the draw names
  it and the ledger records it, so that no step of a draw is trained on twice (see
  PoissonBatchStream.next_step), however its files are copied, renamed or re-packed."""
  return f"{secrets.token_hex(16)}/{first_step}-{last_step}"


def draw_steps(draw: str) -> Tuple[int, int]:
  """The steps [first, last) a draw covers (see `new_draw`)."""
  try:
    first, last = (int(part) for part in draw.rsplit("/", 1)[1].split("-"))
  except (IndexError, ValueError):
    raise ValueError(f"{draw!r} is not a draw's identity") from None
  return first, last


def draw_first_step(draw: str) -> int:
  """The first step a draw covers (see `new_draw`)."""
  return draw_steps(draw)[0]


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
      raise ValueError(
        f"a shard's file must be a file name in the batches directory; got {self.file!r}"
      )
    if not (
      is_int(self.first_step) and is_int(self.last_step) and 0 <= self.first_step < self.last_step
    ):
      raise ValueError(
        f"shard {self.file}: steps [{self.first_step!r}, {self.last_step!r}) are not a range"
      )
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
    source, split: the Examples artifact (its uri) and the split the samples were drawn from.
    draw: the draw's identity (`new_draw`), which every record names.
    data_digest: the digest of the split's records (dp_tfx.record_digest): the same data drawn
      again, under any name, has the same one (the draw is fresh each time).
  """

  dataset_size: int
  batch_size: int
  sampling_rate: float
  steps: int
  first_step: int
  last_step: int
  physical_batch_size: int
  shards: Tuple[Shard, ...]
  source: str
  split: str
  draw: str
  data_digest: str

  def __post_init__(self):
    for name in ("source", "split", "draw"):
      if not (isinstance(getattr(self, name), str) and getattr(self, name)):
        raise ValueError(
          f"BatchManifest.{name} must name the examples sampled; got {getattr(self, name)!r}"
        )
    for name in ("dataset_size", "batch_size", "steps", "physical_batch_size"):
      if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
        raise ValueError(f"BatchManifest.{name} must be an int >= 1; got {getattr(self, name)!r}")
    if not (
      is_finite_number(self.sampling_rate)
      and self.sampling_rate == self.batch_size / self.dataset_size
    ):
      raise ValueError(
        f"BatchManifest.sampling_rate {self.sampling_rate!r} is not batch_size / "
        f"dataset_size = {self.batch_size} / {self.dataset_size}"
      )
    if not (
      is_int(self.first_step)
      and is_int(self.last_step)
      and 0 <= self.first_step < self.last_step <= self.steps
    ):
      raise ValueError(
        f"BatchManifest steps [{self.first_step!r}, {self.last_step!r}) are not a "
        f"range within the plan's {self.steps} steps"
      )
    covered = self.first_step
    for shard in self.shards:
      if shard.first_step != covered:
        raise ValueError(
          f"BatchManifest: shard {shard.file} starts at step {shard.first_step}, not at {covered}"
        )
      covered = shard.last_step
    if covered != self.last_step:
      raise ValueError(f"BatchManifest: the shards end at step {covered}, not at {self.last_step}")
    if draw_first_step(self.draw) > self.first_step:
      raise ValueError(f"BatchManifest: draw {self.draw} starts after step {self.first_step}")
    if (
      record_digest.parse(self.data_digest, "BatchManifest.data_digest").count != self.dataset_size
    ):
      raise ValueError(
        f"BatchManifest.data_digest {self.data_digest} counts other records than "
        f"the dataset_size {self.dataset_size!r}"
      )

  def to_dict(self) -> dict:
    values = dataclasses.asdict(self)
    return {"format_version": FORMAT_VERSION, **values, "shards": list(values["shards"])}

  @classmethod
  def from_dict(cls, values: dict) -> "BatchManifest":
    values = dict(values)
    if values.pop("format_version", None) != FORMAT_VERSION:
      raise ValueError(
        f"unsupported Poisson batches format; this dp_tfx reads version {FORMAT_VERSION}"
      )
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
    return canonical_digest(self.to_dict())

  @property
  def fingerprint(self) -> str:
    """What a ledger records as the dataset fingerprint of a run on these samples."""
    return f"poisson-draw:{self.draw}"

  def check_recorded_runs(self, segments: Sequence) -> None:
    """Refuses ledger segments (dp_tfx.ledger.Segment) that do not describe runs on this draw as
    it is: each of the draw's segments must have its N, q, planned steps and physical batch, and
    together they cannot have taken more steps than the draw holds (a step taken twice: the
    second time its sample is no longer a fresh Poisson sample). A stream takes the draw's steps
    in order from the first no run recorded, so a step cannot be skipped.

    Raises:
      ValueError: naming the first difference; also if no segment is on this draw.
    """
    mine = [segment for segment in segments if segment.dataset_fingerprint == self.fingerprint]
    if not mine:
      raise ValueError(f"the ledger records no run on the Poisson batches of draw {self.draw}")
    for segment in mine:
      recorded = (
        segment.sampling,
        segment.dataset_size,
        segment.planned_steps,
        segment.physical_batch_size,
      )
      expected = (POISSON, self.dataset_size, self.steps, self.physical_batch_size)
      if recorded != expected or not math.isclose(
        segment.sampling_rate, self.sampling_rate, rel_tol=1e-12
      ):
        raise ValueError(
          f"segment {segment.segment_id} of the ledger describes a run on the Poisson batches "
          f"of draw {self.draw} with (sampling, N, planned steps, physical batch) {recorded} "
          f"and q {segment.sampling_rate}; the batches' manifest says {expected} and q "
          f"{self.sampling_rate}"
        )
    taken = sum(segment.noisy_steps for segment in mine)
    first, last = draw_steps(self.draw)
    if taken > last - first:
      raise ValueError(
        f"the ledger records {taken} steps on the Poisson batches of draw "
        f"{self.draw}, which hold {last - first}: a step was taken twice"
      )

  def save(self, directory, key: Optional[bytes] = None) -> str:
    """Writes the manifest; with a ledger key (dp_tfx.signing), its digest's signature beside it,
    which a PoissonBatchStream opened with the key set requires."""
    if key is not None:
      files.write_text(os.path.join(os.fspath(directory), SIGNATURE_FILE), self.signature(key))
    return files.write_text(
      os.path.join(os.fspath(directory), MANIFEST_FILE),
      json.dumps(self.to_dict(), indent=2, sort_keys=True),
    )

  def signature(self, key: bytes) -> str:
    """The manifest's digest signed with the ledger key `key`."""
    return signing.sign(self.digest().encode(), key)

  def check_signature(self, signature: Optional[str], key: bytes, where: str) -> None:
    """Raises ValueError unless `signature` (beside the manifest, or in MLMD) is this manifest's
    digest signed with `key`: what a manifest edited to a larger N (a smaller q) cannot forge."""
    if not signing.is_valid(self.digest().encode(), signature, key):
      raise ValueError(
        f"the Poisson batches in {where} are not signed with the ledger key "
        f"({'a wrong signature' if signature else 'no signature'}): with a key "
        "set, only batches a PoissonBatchGen holding it wrote are used"
      )

  @staticmethod
  def signature_beside(directory) -> Optional[str]:
    """The signature `save` wrote beside the manifest in `directory`, if any."""
    path = os.path.join(os.fspath(directory), SIGNATURE_FILE)
    return files.read_text(path).strip() if files.exists(path) else None

  @classmethod
  def load(cls, directory) -> "BatchManifest":
    """Reads `{directory}/poisson_batches.json`; anything missing or malformed raises
    ValueError."""
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    try:
      return cls.from_dict(json.loads(files.read_text(path)))
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError) as error:
      raise ValueError(f"cannot read the Poisson batches manifest at {path}: {error}") from None


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


# serialized examples [L] -> (features, labels): e.g. a user module's feature_spec and decode.
DecodeFn = Callable[[tf.Tensor], tuple]
# The range of the keyed record fingerprints (tf.strings.to_hash_bucket_strong's SipHash).
_FINGERPRINT_BUCKETS = 2**63 - 1


class PoissonBatchStream:
  """Training data as PoissonBatchGen wrote it, for `DPModel.fit(stream)`: each step's sample is
  read from the shards when that step comes, so memory holds a few steps, whatever N is.

  Opening reads every shard once (before any step is counted) and refuses batches that are not
  what the manifest describes: a shard whose sha256 differs, a step missing, repeated or out of
  order, a record whose mask is not its sample's 1s then 0s, whose length is not the whole
  physical batches its sample needs, or whose sample holds an example twice. It keeps a keyed
  fingerprint of every step's record (SipHash, a key drawn from the OS when the stream opens):
  while training each record read must match it, so a shard changed after the check stops
  training instead of feeding unchecked samples.

  Args:
    directory: the batches' directory (a PoissonBatches artifact's uri).
    decode: [L] serialized examples -> (features, labels), as training wants them.

  With a ledger key set (dp_tfx.signing), the manifest must carry the key's signature (as
  PoissonBatchGen holding the key writes it): without MLMD, whoever edits the manifest's N could
  otherwise claim a smaller q.

  Raises:
    ValueError: if the manifest is missing, malformed or (with a key) not signed with the key,
      or the shards are not what it says.
  """

  def __init__(self, directory, decode: DecodeFn):
    self.directory = os.fspath(directory)
    self.manifest = BatchManifest.load(self.directory)
    key = signing.configured_key()
    if key is not None:
      self.manifest.check_signature(
        BatchManifest.signature_beside(self.directory), key, self.directory
      )
    self._decode = decode
    self._key = [secrets.randbits(63), secrets.randbits(63)]  # TensorFlow takes int64 keys
    self._fingerprints = np.concatenate(
      [self._checked_shard(shard) for shard in self.manifest.shards]
    )

  def _fingerprint(self, record: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_strong(record, _FINGERPRINT_BUCKETS, self._key)

  def _checked_shard(self, shard: Shard) -> np.ndarray:
    """The shard's step fingerprints, after checking its bytes and every record in it."""
    path = os.path.join(self.directory, shard.file)
    refuse = lambda why: ValueError(f"Poisson batch shard {shard.file} in {self.directory}: {why}")
    actual = files.sha256(path)
    if actual != shard.sha256:
      raise refuse(
        f"is not the one the manifest records (sha256 {actual}, recorded {shard.sha256})"
      )
    physical = self.manifest.physical_batch_size

    draw = self.manifest.draw

    def inspect(record):
      step, examples, mask, record_draw = parse_step_record(record)
      length = tf.size(mask)
      of_this_draw = tf.equal(record_draw, draw)
      sampled = tf.reduce_sum(tf.cast(tf.equal(mask, 1.0), tf.int32))
      slots = tf.maximum(1, (sampled + physical - 1) // physical) * physical
      well_formed = (
        tf.equal(tf.size(examples), length)
        & tf.equal(length, slots)
        & tf.reduce_all(tf.equal(mask, tf.cast(tf.range(length) < sampled, tf.float32)))
        & tf.equal(tf.size(tf.unique(examples[:sampled]).y), sampled)
        & of_this_draw
      )
      return step, sampled, well_formed, self._fingerprint(record)

    records = tf.data.TFRecordDataset(path, compression_type="GZIP").map(
      inspect, num_parallel_calls=tf.data.AUTOTUNE
    )
    parts = list(records.batch(4096).as_numpy_iterator())
    steps, sampled, well_formed, fingerprints = (
      np.concatenate([part[i] for part in parts]) if parts else np.zeros([0], np.int64)
      for i in range(4)
    )
    if not np.array_equal(steps, np.arange(shard.first_step, shard.last_step)):
      raise refuse(f"holds steps other than [{shard.first_step}, {shard.last_step}) in order")
    if not np.all(well_formed):
      bad = int(steps[np.flatnonzero(~well_formed.astype(bool))[0]])
      raise refuse(
        f"step {bad}'s record is not a padded sample of draw {draw} (its mask must "
        f"be 1 for each sampled example, then 0 to whole physical batches of "
        f"{physical}, and no example may be sampled twice)"
      )
    if int(np.sum(sampled)) != shard.sampled:
      raise refuse(f"samples {int(np.sum(sampled))} examples, the manifest says {shard.sampled}")
    return fingerprints.astype(np.int64)

  @property
  def fingerprint(self) -> str:
    """Names the data in the ledger: the draw (the samples themselves, however packaged). The
    DPTrainer ties the manifest to MLMD by its digest."""
    return self.manifest.fingerprint

  @property
  def dataset_size(self) -> int:
    return self.manifest.dataset_size

  def example_batch(self, size: int = 2) -> tuple:
    """(features, labels) of `size` copies of the padding example: real shapes and dtypes, for
    building the model and checking a step before any sample is read."""
    first = os.path.join(self.directory, self.manifest.shards[0].file)
    record = next(iter(tf.data.TFRecordDataset(first, compression_type="GZIP")))
    _, examples, _, _ = parse_step_record(record)
    return self._decode(tf.repeat(examples[-1:], size))

  def logical_batches(
    self,
    plan,
    key,
    first_step: int,
    last_step: int,
    pad_multiple: Optional[int] = None,
    step_noise: Optional[Callable] = None,
  ) -> tf.data.Dataset:
    """As sampling.logical_batches for data in memory: the steps' samples for `plan` (a
    TrainingPlan), which must be the plan the batches were drawn for. `key` is not used: the
    samples were drawn with the OS's randomness."""
    del key
    manifest = self.manifest
    drawn_for = (
      manifest.dataset_size,
      manifest.sampling_rate,
      manifest.steps,
      manifest.physical_batch_size,
    )
    planned = (plan.dataset_size, plan.sampling_rate, plan.steps, plan.physical_batch_size)
    if plan.sampling != POISSON or drawn_for != planned:
      raise ValueError(
        f"the Poisson batches in {self.directory} were drawn for another plan: "
        f"(N, q, steps, physical batch) {drawn_for}, this run plans {planned} "
        f"with {plan.sampling} sampling"
      )
    batches = self.steps(first_step, last_step, pad_multiple)
    return sampling.with_step_noise(batches, first_step, last_step, step_noise).prefetch(
      tf.data.AUTOTUNE
    )

  def steps(
    self, first_step: int, last_step: int, pad_multiple: Optional[int] = None
  ) -> tf.data.Dataset:
    """(features, labels, mask) for each step of [first_step, last_step), in order; with
    `pad_multiple` (a divisor of the physical batch) a step's padding is cut to a multiple of it.

    Raises:
      ValueError: if the batches do not hold those steps. While reading, a record other than the
        one checked when the stream opened stops training with an error.
    """
    manifest = self.manifest
    if not manifest.first_step <= first_step < last_step <= manifest.last_step:
      raise ValueError(
        f"the Poisson batches in {self.directory} hold steps "
        f"[{manifest.first_step}, {manifest.last_step}); training needs "
        f"[{first_step}, {last_step})"
      )
    shards = [
      shard
      for shard in manifest.shards
      if shard.first_step < last_step and shard.last_step > first_step
    ]
    records = tf.data.TFRecordDataset(
      [os.path.join(self.directory, shard.file) for shard in shards], compression_type="GZIP"
    )
    records = records.skip(first_step - shards[0].first_step).take(last_step - first_step)
    expected = tf.constant(self._fingerprints)

    def checked(record, step):
      unchanged = tf.debugging.assert_equal(
        self._fingerprint(record),
        expected[step - manifest.first_step],
        message="the Poisson batches changed since the stream opened (or skip a step)",
      )
      with tf.control_dependencies([unchanged]):
        _, examples, mask, _ = parse_step_record(tf.identity(record))
      if pad_multiple is not None:  # the sample comes first: only padding is cut
        sampled = tf.cast(tf.reduce_sum(mask), tf.int32)
        kept = tf.maximum(1, (sampled + pad_multiple - 1) // pad_multiple) * pad_multiple
        examples, mask = examples[:kept], mask[:kept]
      features, labels = self._decode(examples)
      return features, labels, mask

    steps = tf.data.Dataset.range(first_step, last_step)
    return tf.data.Dataset.zip((records, steps)).map(checked, num_parallel_calls=tf.data.AUTOTUNE)

  def next_step(self, ledger, own_segment=None, expected: Optional[int] = None) -> int:
    """The first step of the draw no run has taken: the draw's steps are trained on in order,
    each once, so it is the draw's first step plus every step a segment of `ledger` (its whole
    history) recorded on the draw (a crashed run's recorded steps are spent). Only a ledger
    that outlives its model knows them: DPModel.fit takes a stream only with one.

    Raises:
      ValueError: while a segment on the draw other than `own_segment` is unfinished (its run may
        be taking the next steps now), or if it is not `expected` (another run took steps since).
    """
    mine = [
      segment for segment in ledger.segments if segment.dataset_fingerprint == self.fingerprint
    ]
    live = [
      segment for segment in mine if segment.finished_at is None and segment is not own_segment
    ]
    if live:
      raise ValueError(
        f"run {live[0].run_id} is training on the Poisson batches in "
        f"{self.directory} (its segment {live[0].segment_id} is unfinished); "
        f"two runs must never use the same samples. If that run was killed, "
        f"finish its segment first: dp-tfx release-reservation "
        f"{ledger.history_dir or ledger.path} --segment {live[0].segment_id}"
      )
    step = draw_first_step(self.manifest.draw) + sum(s.noisy_steps for s in mine)
    if expected is not None and step != expected:
      raise ValueError(
        f"another run took steps {expected} to {step - 1} of the Poisson batches "
        f"in {self.directory} while this one prepared; start it again"
      )
    return step
