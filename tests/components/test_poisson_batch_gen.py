"""PoissonBatchGen on Beam's DirectRunner (in-process and two worker processes): N counted
exactly, every step present in order, each step's sample a Poisson sample of the data, padded."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from dp_tfx import budget, files, record_digest
from dp_tfx import poisson_batches as pb
from dp_tfx.components import artifacts, specs, testing
from dp_tfx.components.dp_trainer import executor as trainer_executor
from dp_tfx.components.model_io import split_file_patterns
from dp_tfx.components.poisson_batch_gen import PoissonBatchGen
from dp_tfx.components.poisson_batch_gen import executor as batch_gen_executor
from dp_tfx.config import DPConfig
from dp_tfx.ledger import LedgerError
from dp_tfx.plan import SamplingPlan

EXAMPLES = 300
# The component draws from OS entropy (no seed can be given), so each statistical check below
# is two-sided and fails an honest sampler with probability 1e-6.
SIGNIFICANCE = 1e-6


def _example(index: int) -> bytes:
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[float(index)])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[index % 2])),
      }
    )
  ).SerializeToString()


@pytest.fixture
def examples(tmp_path):
  path = tmp_path / "train.tfrecord.gz"
  with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
    for index in range(EXAMPLES):
      writer.write(_example(index))
  return testing.examples_artifact(tmp_path / "examples", {"train": path})


def _run(examples, directory, config, beam_args=(), **properties):
  output = artifacts.PoissonBatches()
  output.uri = str(directory)
  directory.mkdir()
  exec_properties = {specs.DP_CONFIG_KEY: config.to_json(), **properties}
  batch_gen_executor.Executor(
    batch_gen_executor.Executor.Context(beam_pipeline_args=list(beam_args))
  ).Do({specs.EXAMPLES_KEY: [examples]}, {specs.POISSON_BATCHES_KEY: [output]}, exec_properties)
  return output


def _steps(directory, manifest):
  """step -> (sampled examples, padding count), read back from the shards in file order, and
  the padding examples."""
  steps, padding_examples = {}, set()
  for shard in manifest.shards:
    path = str(directory / shard.file)
    assert files.sha256(path) == shard.sha256
    sampled = 0
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      step, examples, mask, _ = (t.numpy() for t in pb.parse_step_record(record))
      assert int(step) not in steps
      count = int(mask.sum())
      assert list(mask) == [1] * count + [0] * (len(mask) - count)  # the sample, then padding
      steps[int(step)] = (list(examples[:count]), len(mask) - count)
      padding_examples.update(examples[count:])
      sampled += count
    assert sampled == shard.sampled
  return steps, padding_examples


@pytest.mark.parametrize(
  "beam_args",
  [(), ("--direct_num_workers=2", "--direct_running_mode=multi_processing")],
  ids=["in_process", "two_workers"],
)
def test_every_step_is_a_padded_poisson_sample_of_the_data(tmp_path, examples, beam_args):
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=60, physical_batch_size=24)
  output = _run(examples, tmp_path / "batches", config, beam_args, steps_per_shard=25)
  manifest = pb.BatchManifest.load(output.uri)
  plan = SamplingPlan.from_config(config, EXAMPLES)
  assert (
    manifest.dataset_size,
    manifest.sampling_rate,
    manifest.steps,
    manifest.physical_batch_size,
  ) == (EXAMPLES, 0.1, 60, 24)
  assert (plan.sampling_rate, plan.steps, plan.physical_batch_size) == (0.1, 60, 24)
  assert [(s.first_step, s.last_step) for s in manifest.shards] == [(0, 25), (25, 50), (50, 60)]
  assert output.get_string_custom_property("manifest_digest") == manifest.digest()
  assert output.get_int_custom_property("dataset_size") == EXAMPLES
  # The data's digest, summed over the workers' records: what the budget root knows it by.
  assert manifest.data_digest == record_digest.of_records(_example(i) for i in range(EXAMPLES))

  steps, padding_examples = _steps(tmp_path / "batches", manifest)
  assert list(steps) == list(range(60))  # every step once, in order
  data = {_example(i) for i in range(EXAMPLES)}
  padding_example = min(data)
  inclusions = collections.Counter()
  for step, (sample, padding) in steps.items():
    assert set(sample) <= data and len(set(sample)) == len(sample)  # no example twice in a step
    assert (len(sample) + padding) % 24 == 0 and len(sample) + padding >= 24
    assert padding < 24 or not sample  # whole physical batches, no more
    inclusions.update(sample)
  assert padding_examples == {padding_example}
  # Sample sizes ~ Binomial(N, q) per step; each example's inclusions ~ Binomial(steps, q).
  sizes = np.array([len(sample) for sample, _ in steps.values()])
  chi2 = np.sum((sizes - 30) ** 2 / (30 * 0.9))
  # Too spread out or too even (fixed-size batches give 0) both fail.
  assert SIGNIFICANCE / 2 < stats.chi2.sf(chi2, 60) < 1 - SIGNIFICANCE / 2
  counts = np.array([inclusions[example] for example in data])
  tolerance = stats.norm.isf(SIGNIFICANCE / 2) * math.sqrt(60 * 0.1 * 0.9 / EXAMPLES)
  assert abs(counts.mean() - 6) < tolerance


def test_a_range_of_steps_and_runs_that_never_repeat_their_samples(tmp_path, examples):
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=60)
  first = _run(examples, tmp_path / "a", config, first_step=10, last_step=20)
  manifest = pb.BatchManifest.load(first.uri)
  assert (manifest.first_step, manifest.last_step, manifest.steps) == (10, 20, 60)
  steps, _ = _steps(tmp_path / "a", manifest)
  assert list(steps) == list(range(10, 20))
  # No seed: a second run draws other samples (equal by chance with negligible probability).
  second = _run(examples, tmp_path / "b", config, first_step=10, last_step=20)
  again, _ = _steps(tmp_path / "b", pb.BatchManifest.load(second.uri))
  assert [sorted(s) for s, _ in steps.values()] != [sorted(s) for s, _ in again.values()]


def test_steps_outside_the_plan_are_refused(tmp_path, examples):
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=60)
  with pytest.raises(ValueError, match=r"steps \[50, 70\) are not a range within the plan's 60"):
    _run(examples, tmp_path / "a", config, first_step=50, last_step=70)


def test_the_component_checks_its_arguments():
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=60)
  with pytest.raises(ValueError, match="draws Poisson samples"):
    PoissonBatchGen(
      examples=None,
      dp_config=DPConfig(noise_multiplier=1.0, batch_size=30, steps=60, sampling="shuffle"),
    )
  with pytest.raises(ValueError, match="last_step .* must be above first_step"):
    PoissonBatchGen(examples=None, dp_config=config, first_step=5, last_step=5)
  with pytest.raises(ValueError, match="steps_per_shard must be"):
    PoissonBatchGen(examples=None, dp_config=config, steps_per_shard=True)


def test_the_trainer_takes_only_the_batches_recorded_for_its_examples(tmp_path, examples):
  import json

  from dp_tfx.components.dp_trainer import executor as trainer_executor

  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=6)
  output = _run(examples, tmp_path / "batches", config)
  decode = lambda serialized: (serialized, serialized)
  stream = pb.PoissonBatchStream(output.uri, decode)
  trainer_executor._check_batches_describe(stream, output, examples, "train")
  with pytest.raises(ValueError, match="drawn from split 'train' of .* trains on split 'eval'"):
    trainer_executor._check_batches_describe(stream, output, examples, "eval")
  # N edited in the manifest (q = B / N with it: a smaller q, a smaller epsilon), shards intact.
  path = tmp_path / "batches" / pb.MANIFEST_FILE
  manifest = json.loads(path.read_text())
  manifest.update(dataset_size=3000, sampling_rate=30 / 3000)
  path.write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="counts other records than the dataset_size 3000"):
    pb.PoissonBatchStream(output.uri, decode)
  # Its data digest's count edited as well: the digest MLMD recorded still tells.
  manifest.update(data_digest=manifest["data_digest"].replace(":300:", ":3000:"))
  path.write_text(json.dumps(manifest))
  edited = pb.PoissonBatchStream(output.uri, decode)
  with pytest.raises(ValueError, match="not the ones PoissonBatchGen recorded in MLMD"):
    trainer_executor._check_batches_describe(edited, output, examples, "train")


def test_with_a_ledger_key_the_trainer_takes_only_batches_signed_with_it(
  tmp_path, examples, monkeypatch
):
  from dp_tfx import signing
  from dp_tfx.components.dp_trainer import executor as trainer_executor

  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=6)
  output = _run(examples, tmp_path / "batches", config)
  stream = pb.PoissonBatchStream(output.uri, lambda serialized: (serialized, serialized))
  trainer_executor._check_batches_describe(stream, output, examples, "train")
  # The digest recorded again (as whoever edits the manifest and MLMD could), not re-signed.
  output.set_string_custom_property(artifacts.MANIFEST_SIGNATURE_PROPERTY, "")
  with pytest.raises(ValueError, match="not signed with the ledger key"):
    trainer_executor._check_batches_describe(stream, output, examples, "train")
  monkeypatch.setenv(signing.KEY_ENV, "another-ledger-key-of-32-bytes-or-more")
  signed_by_other = _run(examples, tmp_path / "other", config)
  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  # Refused when the stream opens (the signature beside the manifest), before MLMD is asked.
  with pytest.raises(ValueError, match="a wrong signature"):
    pb.PoissonBatchStream(signed_by_other.uri, lambda serialized: (serialized, serialized))


def test_the_same_examples_drawn_again_under_another_name_are_refused(tmp_path, examples):
  # Each draw is fresh, so the ledger's fingerprint (the draw's) differs; the data's digest does
  # not: a second draw under a new name opens no fresh budget, in memory or streamed.
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=6)
  root = str(tmp_path / "budgets")

  def check_budget(source, training_data, patterns=split_file_patterns(examples, "train")):
    trainer_executor.Executor._check_budget(
      budget.history_dir(root, source), root, source, training_data, patterns
    )

  def streamed(output):
    return pb.PoissonBatchStream(output.uri, lambda serialized: (serialized, serialized)), None

  check_budget("digits", streamed(_run(examples, tmp_path / "first", config)))
  second = _run(examples, tmp_path / "second", config)
  with pytest.raises(LedgerError, match="under the data source 'digits'"):
    check_budget("digits, renamed", streamed(second))
  check_budget("digits", streamed(second))  # under its own name it composes
  # The same examples in memory, in another order and file, under a third name.
  reordered = tmp_path / "reordered.tfrecord"
  with tf.io.TFRecordWriter(str(reordered)) as writer:
    for index in reversed(range(EXAMPLES)):
      writer.write(_example(index))
  arrays = np.arange(EXAMPLES, dtype=np.float32)[::-1], np.arange(EXAMPLES) % 2
  with pytest.raises(LedgerError, match="under the data source 'digits'"):
    check_budget("reordered digits", arrays, [str(reordered)])
