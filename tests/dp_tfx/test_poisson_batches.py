"""Poisson batches drawn ahead: each example in each step independently with probability q, and
the file format (padding, manifest, shards) read back exactly."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from dp_tfx import files, record_digest
from dp_tfx import poisson_batches as pb

SIGNIFICANCE = 1e-3  # each statistical test below fails an honest sampler this rarely
DRAW = pb.new_draw(0, 3)
DATA = record_digest.of_records(b"%d" % i for i in range(10))  # the 10 examples sampled


def _draws(examples, rate, first, last, seed=0):
  rng = np.random.default_rng(seed)
  return [pb.inclusion_steps(rng, rate, first, last) for _ in range(examples)]


def test_each_step_includes_each_example_independently_with_probability_q():
  examples, steps, rate = 20_000, 40, 0.05
  draws = _draws(examples, rate, 0, steps)
  included = np.zeros([examples, steps], bool)
  for example, example_steps in enumerate(draws):
    assert np.all(np.diff(example_steps) > 0)  # increasing: no step twice
    included[example, example_steps] = True
  # Per step: Binomial(examples, q) sample sizes (chi-square against it over all steps).
  sizes = included.sum(axis=0)
  expected = examples * rate
  chi2 = np.sum((sizes - expected) ** 2 / (expected * (1 - rate)))
  assert stats.chi2.sf(chi2, steps) > SIGNIFICANCE
  # Per example: Binomial(steps, q) inclusion counts.
  counts = np.bincount(included.sum(axis=1), minlength=steps + 1)
  probabilities = stats.binom.pmf(np.arange(steps + 1), steps, rate)
  kept = probabilities * examples >= 5  # the chi-square approximation's usual condition
  observed = np.append(counts[kept], counts[~kept].sum())
  wanted = np.append(probabilities[kept], probabilities[~kept].sum()) * examples
  assert stats.chisquare(observed, wanted).pvalue > SIGNIFICANCE
  # Independence across steps: consecutive and distant steps together as often as q^2.
  for lag in (1, 7):
    both = np.mean(included[:, lag:] & included[:, :-lag])
    standard_error = np.sqrt(rate**2 * (1 - rate**2) / (examples * (steps - lag)))
    assert abs(both - rate**2) < 4 * standard_error, lag


def test_a_range_of_steps_is_drawn_alone_and_q_one_takes_every_step():
  for example_steps in _draws(200, 0.3, 100, 130):
    assert np.all((example_steps >= 100) & (example_steps < 130))
  assert all(list(s) == list(range(5, 9)) for s in _draws(3, 1.0, 5, 9))
  assert all(len(s) == 0 for s in _draws(3, 0.5, 7, 7))


def test_the_work_follows_the_inclusions_not_the_steps():
  # A billion steps at q = 1e-7: about 100 inclusions, drawn without touching every step.
  (steps,) = _draws(1, 1e-7, 0, 10**9)
  assert 50 < len(steps) < 160 and steps[-1] < 10**9


@pytest.mark.parametrize("rate", [0.0, 1.5, float("nan"), True])
def test_a_rate_outside_zero_one_is_refused(rate):
  with pytest.raises(ValueError, match="sampling rate"):
    pb.inclusion_steps(np.random.default_rng(0), rate, 0, 10)


def _parse(record):
  step, examples, mask, draw = pb.parse_step_record(tf.constant(record))
  assert draw.numpy().decode() == DRAW
  return int(step), list(examples.numpy()), list(mask.numpy())


def test_a_step_is_its_sample_then_masked_padding_to_whole_physical_batches():
  assert _parse(pb.step_record(3, [b"a", b"b", b"c"], 2, b"pad", DRAW)) == (
    3,
    [b"a", b"b", b"c", b"pad"],
    [1, 1, 1, 0],
  )
  assert _parse(pb.step_record(4, [], 2, b"pad", DRAW)) == (4, [b"pad", b"pad"], [0, 0])
  assert _parse(pb.step_record(5, [b"a", b"b"], 2, b"pad", DRAW)) == (5, [b"a", b"b"], [1, 1])


def _manifest(tmp_path):
  samples = {0: [b"x", b"y", b"z"], 2: [b"w"]}
  shards = (
    pb.write_shard(str(tmp_path), 0, 2, samples, 2, b"pad", DRAW),
    pb.write_shard(str(tmp_path), 2, 3, samples, 2, b"pad", DRAW),
  )
  return pb.BatchManifest(
    dataset_size=10,
    batch_size=2,
    sampling_rate=0.2,
    steps=5,
    first_step=0,
    last_step=3,
    physical_batch_size=2,
    shards=shards,
    source="/examples/1",
    split="train",
    draw=DRAW,
    data_digest=DATA,
  )


def test_shards_hold_their_steps_in_order_with_their_digests(tmp_path):
  manifest = _manifest(tmp_path)
  manifest.save(tmp_path)
  loaded = pb.BatchManifest.load(tmp_path)
  assert loaded == manifest and loaded.digest() == manifest.digest()
  assert [shard.sampled for shard in loaded.shards] == [3, 1]
  records = []
  for shard in loaded.shards:
    path = str(tmp_path / shard.file)
    assert files.sha256(path) == shard.sha256
    records += [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
  assert [_parse(record) for record in records] == [
    (0, [b"x", b"y", b"z", b"pad"], [1, 1, 1, 0]),
    (1, [b"pad", b"pad"], [0, 0]),
    (2, [b"w", b"pad"], [1, 0]),
  ]


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda d: d.update(sampling_rate=0.1), "is not batch_size / dataset_size"),
    (lambda d: d.update(last_step=6), "not a range within the plan"),
    (lambda d: d["shards"].pop(0), "starts at step 2, not at 0"),
    (lambda d: d["shards"].pop(), "end at step 2, not at 3"),
    (lambda d: d["shards"][0].update(sampled=-1), "sampled must be"),
    (lambda d: d["shards"][0].update(file="../elsewhere.gz"), "a file name"),
    (lambda d: d.update(format_version=1), "unsupported"),
    (lambda d: d.update(format_version=3), "unsupported"),
    (lambda d: d.update(data_digest="sha256:" + "0" * 64), "data_digest must be a record digest"),
    (lambda d: d.update(dataset_size=20, sampling_rate=0.1), "counts other records"),
    (lambda d: d.update(seed=1), "unknown BatchManifest field"),
    (lambda d: d.pop("steps"), "steps"),
    (lambda d: d.update(source=""), "must name the examples sampled"),
    (lambda d: d.update(draw="1234/2-3"), "starts after step 0"),
    (lambda d: d.update(draw="no-range"), "is not a draw's identity"),
  ],
)
def test_malformed_manifests_are_refused_readably(tmp_path, edit, message):
  document = _manifest(tmp_path).to_dict()
  edit(document)
  (tmp_path / pb.MANIFEST_FILE).write_text(json.dumps(document))
  with pytest.raises(ValueError, match="cannot read the Poisson batches manifest") as error:
    pb.BatchManifest.load(tmp_path)
  assert message in str(error.value)


def test_the_digest_names_every_fact():
  manifest = _manifest_without_files()
  assert manifest.digest() != dataclasses.replace(manifest, steps=6).digest()
  shard = dataclasses.replace(manifest.shards[0], sha256="1" * 64)
  assert manifest.digest() != dataclasses.replace(manifest, shards=(shard,)).digest()


def _manifest_without_files():
  shard = pb.Shard(file=pb.shard_name(0, 3), first_step=0, last_step=3, sampled=3, sha256="0" * 64)
  return pb.BatchManifest(
    dataset_size=10,
    batch_size=2,
    sampling_rate=0.2,
    steps=5,
    first_step=0,
    last_step=3,
    physical_batch_size=1,
    shards=(shard,),
    source="/examples/1",
    split="train",
    draw=DRAW,
    data_digest=DATA,
  )
