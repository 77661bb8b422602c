"""PoissonBatchStream: a draw's batches read back step by step, checked against the manifest."""

from __future__ import annotations

import os
import secrets
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from dp_tfx import files, sampling, signing
from dp_tfx.config import POISSON
from dp_tfx.poisson_batches.draws import draw_first_step
from dp_tfx.poisson_batches.manifest import BatchManifest, Shard
from dp_tfx.poisson_batches.records import parse_step_record


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
