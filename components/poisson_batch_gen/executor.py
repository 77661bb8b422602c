"""PoissonBatchGen executor: count the examples, draw every step's Poisson sample on Beam, write
the padded samples in step order (dp_tfx.poisson_batches).

Two Beam pipelines, each one pass over the data: the first counts N exactly (q = B / N needs it)
and picks the padding example; the second draws each example's steps (a Map), groups the draws by
shard of consecutive steps (one shuffle) and writes each shard in step order. Shards whose steps
sampled nothing are written afterwards, padding only. Memory per worker: one shard's samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, List, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils

from dp_tfx import poisson_batches, record_digest, signing
from dp_tfx.components import artifacts, specs
from dp_tfx.components.model_io import TRAIN_SPLIT, split_file_patterns
from dp_tfx.config import DPConfig
from dp_tfx.plan import SamplingPlan

# Shards hold about this many examples (sampled and padding), unless steps_per_shard says.
_EXAMPLES_PER_SHARD = 100_000
# Where a Beam pipeline leaves its small result for the executor (then removed).
_RESULT_FILE = "_beam_result.json"


class Executor(base_beam_executor.BaseBeamExecutor):
  """Writes a PoissonBatches artifact: the steps' padded Poisson samples and their manifest."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    config = DPConfig.from_json(exec_properties[specs.DP_CONFIG_KEY])
    examples = artifact_utils.get_single_instance(input_dict[specs.EXAMPLES_KEY])
    split = exec_properties.get(specs.TRAIN_SPLIT_KEY) or TRAIN_SPLIT
    output = artifact_utils.get_single_instance(output_dict[specs.POISSON_BATCHES_KEY])
    patterns = split_file_patterns(examples, split)

    dataset_size, padding_example, data_digest = self._count(patterns, output.uri)
    sampling = SamplingPlan.from_config(config, dataset_size)
    first_step = exec_properties.get(specs.FIRST_STEP_KEY) or 0
    last_step = exec_properties.get(specs.LAST_STEP_KEY) or sampling.steps
    if not 0 <= first_step < last_step <= sampling.steps:
      raise ValueError(
        f"steps [{first_step}, {last_step}) are not a range within the plan's "
        f"{sampling.steps} steps"
      )
    steps_per_shard = exec_properties.get(specs.STEPS_PER_SHARD_KEY) or max(
      1, _EXAMPLES_PER_SHARD // sampling.physical_batch_size
    )
    logging.info(
      "PoissonBatchGen: %d examples, q = %.4g, steps [%d, %d) of %d, %d steps per shard",
      dataset_size,
      sampling.sampling_rate,
      first_step,
      last_step,
      sampling.steps,
      steps_per_shard,
    )

    shard_ranges = [
      (start, min(start + steps_per_shard, last_step))
      for start in range(first_step, last_step, steps_per_shard)
    ]
    draw = poisson_batches.new_draw(first_step, last_step)
    written = self._draw_and_write(
      patterns, output.uri, sampling, shard_ranges, padding_example, draw
    )
    for first, last in shard_ranges:
      if first not in written:  # no step of it sampled anything
        written[first] = poisson_batches.write_shard(
          output.uri, first, last, {}, sampling.physical_batch_size, padding_example, draw
        )
    manifest = poisson_batches.BatchManifest(
      dataset_size=dataset_size,
      batch_size=sampling.batch_size,
      sampling_rate=sampling.sampling_rate,
      steps=sampling.steps,
      first_step=first_step,
      last_step=last_step,
      physical_batch_size=sampling.physical_batch_size,
      shards=tuple(written[first] for first, _ in shard_ranges),
      source=examples.uri,
      split=split,
      draw=draw,
      data_digest=data_digest,
    )
    manifest.save(output.uri, signing.configured_key())
    artifacts.record_batch_facts(output, manifest)
    logging.info(
      "PoissonBatchGen: wrote %d steps (%d sampled examples) in %d shards, manifest %s",
      last_step - first_step,
      sum(s.sampled for s in manifest.shards),
      len(manifest.shards),
      manifest.digest(),
    )

  def _records(self, pipeline, patterns) -> beam.PCollection:
    reads = [
      pipeline
      | f"Read{i}"
      >> beam.io.ReadFromTFRecord(
        pattern,
        coder=beam.coders.BytesCoder(),
        compression_type=beam.io.filesystem.CompressionTypes.AUTO,
      )
      for i, pattern in enumerate(patterns)
    ]
    return reads | "Records" >> beam.Flatten()

  def _count(self, patterns, directory) -> Tuple[int, bytes, str]:
    """N, the smallest serialized example (pads every step: any real example decodes) and the
    records' digest (dp_tfx.record_digest: the budget root knows the data by it)."""
    path = os.path.join(directory, _RESULT_FILE)
    with self._make_beam_pipeline() as pipeline:
      records = self._records(pipeline, patterns)
      count = records | "Count" >> beam.combiners.Count.Globally()
      smallest = records | "Smallest" >> beam.CombineGlobally(
        lambda values: min(values, default=b"")
      )
      digest = records | "Digest" >> beam.CombineGlobally(_RecordDigestFn())
      _ = count | "Write" >> beam.Map(
        _write_count, path, beam.pvalue.AsSingleton(smallest), beam.pvalue.AsSingleton(digest)
      )
    with tf.io.gfile.GFile(path) as stream:
      facts = json.load(stream)
    tf.io.gfile.remove(path)
    if facts["count"] < 1:
      raise ValueError(f"the Examples' split holds no example ({list(patterns)})")
    return facts["count"], bytes.fromhex(facts["padding_example"]), facts["data_digest"]

  def _draw_and_write(
    self, patterns, directory, sampling: SamplingPlan, shard_ranges, padding_example, draw: str
  ) -> dict:
    """Shard first step -> Shard, for every shard some step of which sampled an example."""
    starts = [first for first, _ in shard_ranges]
    path = os.path.join(directory, _RESULT_FILE)
    with self._make_beam_pipeline() as pipeline:
      _ = (
        self._records(pipeline, patterns)
        | "Draw"
        >> beam.ParDo(
          _DrawInclusions(sampling.sampling_rate, shard_ranges[0][0], shard_ranges[-1][1], starts)
        )
        | "ByShard" >> beam.GroupByKey()
        | "WriteShard"
        >> beam.Map(
          _write_shard,
          directory,
          dict(shard_ranges),
          sampling.physical_batch_size,
          padding_example,
          draw,
        )
        | "All" >> beam.combiners.ToList()
        | "List" >> beam.Map(_write_json, path)
      )
    with tf.io.gfile.GFile(path) as stream:
      shards = [poisson_batches.Shard(**shard) for shard in json.load(stream)]
    tf.io.gfile.remove(path)
    return {shard.first_step: shard for shard in shards}


class _DrawInclusions(beam.DoFn):
  """example -> (shard start, (step, example)) for each step whose sample includes it."""

  def __init__(self, sampling_rate: float, first_step: int, last_step: int, shard_starts):
    self._rate, self._first, self._last = sampling_rate, first_step, last_step
    self._starts = np.asarray(shard_starts)

  def setup(self):
    # OS entropy, per worker; the draws are never written anywhere (a seed would let whoever
    # holds it recompute every sample).
    self._rng = np.random.default_rng()

  def process(self, example: bytes) -> Iterable:
    steps = poisson_batches.inclusion_steps(self._rng, self._rate, self._first, self._last)
    shards = self._starts[np.searchsorted(self._starts, steps, side="right") - 1]
    for shard, step in zip(shards.tolist(), steps.tolist()):
      yield shard, (step, example)


def _write_shard(
  keyed, directory, last_step_of, physical_batch_size, padding_example, draw
) -> dict:
  first, draws = keyed
  samples = {}
  for step, example in draws:
    samples.setdefault(step, []).append(example)
  return dataclasses.asdict(
    poisson_batches.write_shard(
      directory, first, last_step_of[first], samples, physical_batch_size, padding_example, draw
    )
  )


class _RecordDigestFn(beam.CombineFn):
  """The records' dp_tfx.record_digest, summed on the workers and merged."""

  def create_accumulator(self) -> record_digest.RecordDigest:
    return record_digest.RecordDigest()

  def add_input(self, digest, record: bytes) -> record_digest.RecordDigest:
    return digest.add(record)

  def merge_accumulators(self, digests) -> record_digest.RecordDigest:
    return sum(digests, record_digest.RecordDigest())

  def extract_output(self, digest) -> str:
    return digest.text()


def _write_count(count, path, smallest, digest) -> None:
  _write_json({"count": count, "padding_example": smallest.hex(), "data_digest": digest}, path)


def _write_json(value, path) -> None:
  with tf.io.gfile.GFile(path, "w") as stream:
    json.dump(value, stream)
