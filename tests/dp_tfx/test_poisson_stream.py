"""DPModel.fit on Poisson batches drawn ahead (PoissonBatchStream): a step is the clipped mean
gradient of exactly that step's sample, the ledger's facts are the in-memory path's, and batches
that do not fit the plan, or were changed, are refused before a step is counted."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_tfx
from dp_tfx import clipping
from dp_tfx import poisson_batches as pb
from dp_tfx.keras import per_example_loss
from dp_tfx.plan import SamplingPlan
from tests.dp_tfx import models

N = 40
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SPEC = {"x": tf.io.FixedLenFeature([6], tf.float32), "label": tf.io.FixedLenFeature([], tf.int64)}


def _serialized(x, y):
  return [tf.train.Example(features=tf.train.Features(feature={
      "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  })).SerializeToString() for features, label in zip(x, y)]


def _decode(serialized):
  parsed = tf.io.parse_example(serialized, SPEC)
  return parsed["x"], parsed["label"]


def _config(**values):
  return dp_tfx.DPConfig(**{**dict(l2_norm_clip=0.3, noise_multiplier=0.0, batch_size=8, steps=3,
                                   seed=21, delta=1e-5), **values})


def _write_batches(directory, config, seed=0):
  """Batches for `config` over the dense test data, as PoissonBatchGen writes them; returns
  (data, step -> indices of its sample)."""
  directory.mkdir(exist_ok=True)
  x, y = models.batch_for("dense", N, seed=3)
  examples = _serialized(x, y)
  plan = SamplingPlan.from_config(config, N)
  rng = np.random.default_rng(seed)
  samples = {}
  for index in range(N):
    for step in pb.inclusion_steps(rng, plan.sampling_rate, 0, plan.steps):
      samples.setdefault(int(step), []).append(index)
  shard = pb.write_shard(str(directory), 0, plan.steps,
                         {s: [examples[i] for i in idx] for s, idx in samples.items()},
                         plan.physical_batch_size, min(examples))
  pb.BatchManifest(dataset_size=N, batch_size=plan.batch_size, sampling_rate=plan.sampling_rate,
                   steps=plan.steps, first_step=0, last_step=plan.steps,
                   physical_batch_size=plan.physical_batch_size, shards=(shard,)).save(directory)
  return (x, y), samples


def _dp_model(config, **kwargs):
  dp_model = dp_tfx.make_private(models.dense_model(), config, **kwargs)
  dp_model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
  return dp_model


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_one_step_is_the_clipped_mean_gradient_of_that_steps_sample(tmp_path, jit_compile):
  config = _config(steps=1, physical_batch_size=5)  # several physical batches for most samples
  (x, y), samples = _write_batches(tmp_path, config, seed=4)
  dp_model = _dp_model(config)
  dp_model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS, jit_compile=jit_compile)
  dp_model.model(x[:1])
  before = [v.numpy().copy() for v in dp_model.trainable_variables]
  sample = samples[0]
  assert len(sample) > 5
  expected = clipping.reference_clipped_sum(dp_model.model, per_example_loss(LOSS), x[sample],
                                            y[sample], 0.3)
  dp_model.fit(pb.PoissonBatchStream(tmp_path, _decode), verbose=0)
  for b, a, s in zip(before, dp_model.trainable_variables, expected, strict=True):
    np.testing.assert_allclose(b - a.numpy(), s / 8, rtol=1e-4, atol=1e-6)
  assert dp_model.privacy_ledger.noisy_steps == 1


def test_the_ledger_records_what_the_in_memory_path_records(tmp_path):
  config = _config(noise_multiplier=1.0)
  (x, y), _ = _write_batches(tmp_path / "batches", config)
  streamed = _dp_model(config, ledger_path=str(tmp_path / "streamed.json"))
  streamed.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0)
  in_memory = _dp_model(config, ledger_path=str(tmp_path / "in_memory.json"))
  in_memory.fit(x, y, verbose=0)
  facts = lambda ledger: [(s.dataset_size, s.sampling, s.sampling_rate, s.noise_multiplier,
                           s.l2_norm_clip, s.noisy_steps) for s in ledger.segments]
  assert facts(streamed.privacy_ledger) == facts(in_memory.privacy_ledger) == [
      (N, "poisson", 0.2, 1.0, 0.3, 3)]
  assert streamed.epsilon() == in_memory.epsilon()
  assert (streamed.privacy_ledger.dataset_fingerprint ==
          pb.BatchManifest.load(tmp_path / "batches").digest())


def test_without_xla_a_steps_padding_is_cut_to_a_multiple_of_eight(tmp_path):
  config = _config(physical_batch_size=32)
  _, samples = _write_batches(tmp_path, config)
  stream = pb.PoissonBatchStream(tmp_path, _decode)
  for step, (features, labels, mask) in enumerate(stream.steps(0, 3, pad_multiple=8)):
    sampled = len(samples.get(step, []))
    assert int(mask.numpy().sum()) == sampled and len(labels) == len(features)
    assert len(mask) == max(1, -(-sampled // 8)) * 8


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=10), "drawn for another plan"),
    (dict(steps=4), "drawn for another plan"),
    (dict(physical_batch_size=16), "drawn for another plan"),
    (dict(sampling="shuffle"), "drawn for another plan"),
])
def test_batches_drawn_for_another_plan_are_refused_before_a_step(tmp_path, change, message):
  _write_batches(tmp_path / "batches", _config())
  dp_model = _dp_model(_config(**change), ledger_path=str(tmp_path / "ledger.json"))
  with pytest.raises(ValueError, match=message):
    dp_model.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0)
  assert dp_model.privacy_ledger.noisy_steps == 0


def test_a_changed_shard_is_refused_when_the_stream_opens(tmp_path):
  _write_batches(tmp_path, _config())
  (shard,) = pb.BatchManifest.load(tmp_path).shards
  path = tmp_path / shard.file
  changed = bytearray(path.read_bytes())
  changed[len(changed) // 2] ^= 0xFF
  path.write_bytes(bytes(changed))
  with pytest.raises(ValueError, match="is not the one the manifest records"):
    pb.PoissonBatchStream(tmp_path, _decode)


def test_a_skipped_step_stops_training_and_every_step_taken_is_counted(tmp_path):
  config = _config()
  (x, y), _ = _write_batches(tmp_path, config)
  example = _serialized(x[:1], y[:1])[0]
  name = pb.shard_name(0, 3)
  with tf.io.TFRecordWriter(str(tmp_path / name), options="GZIP") as writer:
    for step in (0, 2, 1):  # step 1 comes after step 2
      writer.write(pb.step_record(step, [example], 16, example))
  manifest = pb.BatchManifest.load(tmp_path)
  shard = pb.Shard(file=name, first_step=0, last_step=3, sampled=3,
                   sha256=pb.file_sha256(str(tmp_path / name)))
  pb.BatchManifest(**{**manifest.__dict__, "shards": (shard,)}).save(tmp_path)
  dp_model = _dp_model(config, ledger_path=str(tmp_path / "ledger.json"))
  with pytest.raises(tf.errors.InvalidArgumentError, match="skip or repeat a step"):
    dp_model.fit(pb.PoissonBatchStream(tmp_path, _decode), verbose=0)
  # Step 0 trained; the failed step 1 counts too (its counter does not wait for the data, and
  # the ledger records a step before it runs): over-counted by one, never under.
  assert dp_model.privacy_ledger.noisy_steps == int(dp_model.noisy_steps.numpy()) == 2


def test_a_stream_carries_its_labels():
  with pytest.raises(ValueError, match="carries its labels"):
    dp_tfx.keras._training_data(object.__new__(pb.PoissonBatchStream), np.zeros(3))
