"""DPModel.fit on Poisson batches drawn ahead (PoissonBatchStream): a step is the clipped mean
gradient of exactly that step's sample, the ledger's facts are the in-memory path's, and batches
that do not fit the plan, or were changed, are refused before a step is counted."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_tfx
from dp_tfx import clipping, files, record_digest, signing
from dp_tfx import poisson_batches as pb
from dp_tfx.keras import per_example_loss
from dp_tfx.plan import SamplingPlan
from tests.dp_tfx import models

N = 40
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SPEC = {"x": tf.io.FixedLenFeature([6], tf.float32), "label": tf.io.FixedLenFeature([], tf.int64)}


def _serialized(x, y):
  return [
    tf.train.Example(
      features=tf.train.Features(
        feature={
          "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
          "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
      )
    ).SerializeToString()
    for features, label in zip(x, y)
  ]


def _decode(serialized):
  parsed = tf.io.parse_example(serialized, SPEC)
  return parsed["x"], parsed["label"]


def _config(**values):
  return dp_tfx.DPConfig(
    **{
      **dict(l2_norm_clip=0.3, noise_multiplier=0.0, batch_size=8, steps=3, seed=21, delta=1e-5),
      **values,
    }
  )


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
  draw = pb.new_draw(0, plan.steps)
  shard = pb.write_shard(
    str(directory),
    0,
    plan.steps,
    {s: [examples[i] for i in idx] for s, idx in samples.items()},
    plan.physical_batch_size,
    min(examples),
    draw,
  )
  pb.BatchManifest(
    dataset_size=N,
    batch_size=plan.batch_size,
    sampling_rate=plan.sampling_rate,
    steps=plan.steps,
    first_step=0,
    last_step=plan.steps,
    physical_batch_size=plan.physical_batch_size,
    shards=(shard,),
    source="/examples/1",
    split="train",
    draw=draw,
    data_digest=record_digest.of_records(examples),
  ).save(directory, signing.configured_key())
  return (x, y), samples


def _dp_model(config, **kwargs):
  dp_model = dp_tfx.make_private(models.dense_model(), config, **kwargs)
  dp_model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS)
  return dp_model


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_one_step_is_the_clipped_mean_gradient_of_that_steps_sample(tmp_path, jit_compile):
  config = _config(steps=1, physical_batch_size=5)  # several physical batches for most samples
  (x, y), samples = _write_batches(tmp_path, config, seed=4)
  dp_model = _dp_model(config, ledger_path=str(tmp_path / "ledger.json"))
  dp_model.compile(optimizer=keras.optimizers.SGD(1.0), loss=LOSS, jit_compile=jit_compile)
  dp_model.model(x[:1])
  before = [v.numpy().copy() for v in dp_model.trainable_variables]
  sample = samples[0]
  assert len(sample) > 5
  expected = clipping.reference_clipped_sum(
    dp_model.model, per_example_loss(LOSS), x[sample], y[sample], 0.3
  )
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
  facts = lambda ledger: [
    (s.dataset_size, s.sampling, s.sampling_rate, s.noise_multiplier, s.l2_norm_clip, s.noisy_steps)
    for s in ledger.segments
  ]
  assert (
    facts(streamed.privacy_ledger)
    == facts(in_memory.privacy_ledger)
    == [(N, "poisson", 0.2, 1.0, 0.3, 3)]
  )
  assert streamed.epsilon() == in_memory.epsilon()
  # The ledger names the draw (the samples, however their files are packed later).
  assert (
    streamed.privacy_ledger.dataset_fingerprint
    == "poisson-draw:" + pb.BatchManifest.load(tmp_path / "batches").draw
  )


def test_without_xla_a_steps_padding_is_cut_to_a_multiple_of_eight(tmp_path):
  config = _config(physical_batch_size=32)
  _, samples = _write_batches(tmp_path, config)
  stream = pb.PoissonBatchStream(tmp_path, _decode)
  for step, (features, labels, mask) in enumerate(stream.steps(0, 3, pad_multiple=8)):
    sampled = len(samples.get(step, []))
    assert int(mask.numpy().sum()) == sampled and len(labels) == len(features)
    assert len(mask) == max(1, -(-sampled // 8)) * 8


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(batch_size=10), "drawn for another plan"),
    (dict(steps=4), "drawn for another plan"),
    (dict(physical_batch_size=16), "drawn for another plan"),
    (dict(sampling="shuffle"), "drawn for another plan"),
  ],
)
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


def _rewrite(directory, records, sampled):
  """The batches' one shard rewritten with these raw step records (the manifest re-signed to
  them: an attacker who can write the whole directory)."""
  manifest = pb.BatchManifest.load(directory)
  (shard,) = manifest.shards
  with tf.io.TFRecordWriter(str(directory / shard.file), options="GZIP") as writer:
    for record in records:
      writer.write(record)
  shard = pb.Shard(
    file=shard.file,
    first_step=shard.first_step,
    last_step=shard.last_step,
    sampled=sampled,
    sha256=files.sha256(str(directory / shard.file)),
  )
  pb.BatchManifest(**{**manifest.__dict__, "shards": (shard,)}).save(directory)


def _step(step, examples, mask, draw):
  feature = tf.train.Feature
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        pb.STEP_FEATURE: feature(int64_list=tf.train.Int64List(value=[step])),
        pb.EXAMPLES_FEATURE: feature(bytes_list=tf.train.BytesList(value=examples)),
        pb.MASK_FEATURE: feature(int64_list=tf.train.Int64List(value=mask)),
        pb.DRAW_FEATURE: feature(bytes_list=tf.train.BytesList(value=[draw.encode()])),
      }
    )
  ).SerializeToString()


def _format(directory):
  """(physical batch size, draw) of the batches there."""
  manifest = pb.BatchManifest.load(directory)
  return manifest.physical_batch_size, manifest.draw


@pytest.mark.parametrize(
  "first_mask, message",
  [
    ([2], "is not a padded sample"),  # an example weighed twice
    ([-1], "is not a padded sample"),
    ("padding first", "is not a padded sample"),
    ("twice", "is not a padded sample"),  # one example sampled twice in a step
    ("short", "is not a padded sample"),  # not whole physical batches
    ("mask longer", "is not a padded sample"),
    ("another draw", "is not a padded sample of draw"),  # a step of other batches mixed in
    ("missing step", "holds steps other than"),
    ("out of order", "holds steps other than"),
  ],
)
def test_batches_that_are_not_padded_samples_are_refused_when_the_stream_opens(
  tmp_path, first_mask, message
):
  (x, y), _ = _write_batches(tmp_path, _config())
  a, b = _serialized(x[:2], y[:2])
  physical, draw = _format(tmp_path)
  padded = lambda sample: pb.step_record(0, sample, physical, a, draw)
  first = {
    "padding first": _step(0, [a, b] + [a] * (physical - 2), [0, 1] + [0] * (physical - 2), draw),
    "twice": padded([b, b]),
    "short": _step(0, [b], [1], draw),
    "mask longer": _step(0, [b] * physical, [1] * (physical + 1), draw),
    "another draw": pb.step_record(0, [b], physical, a, pb.new_draw(0, 3)),
  }.get(first_mask if isinstance(first_mask, str) else None)
  if first is None and not isinstance(first_mask, str):
    first = _step(0, [b] + [a] * (physical - 1), first_mask + [0] * (physical - 1), draw)
  steps = [
    first or padded([b]),
    pb.step_record(1, [a], physical, a, draw),
    pb.step_record(2, [], physical, a, draw),
  ]
  if first_mask == "missing step":
    steps = steps[:2]
  if first_mask == "out of order":
    steps = [steps[0], steps[2], steps[1]]
  _rewrite(tmp_path, steps, sampled=3)
  with pytest.raises(ValueError, match=message):
    pb.PoissonBatchStream(tmp_path, _decode)


def test_a_shard_changed_after_the_stream_opened_stops_training(tmp_path):
  config = _config()
  (x, y), samples = _write_batches(tmp_path, config)
  stream = pb.PoissonBatchStream(tmp_path, _decode)
  a, b = _serialized(x[:2], y[:2])
  physical, draw = _format(tmp_path)
  # The same facts and a valid shard, other samples: written after the checks at open.
  _rewrite(tmp_path, [pb.step_record(step, [a], physical, a, draw) for step in range(3)], sampled=3)
  dp_model = _dp_model(config, ledger_path=str(tmp_path / "ledger.json"))
  with pytest.raises(tf.errors.InvalidArgumentError, match="changed since the stream opened"):
    dp_model.fit(stream, verbose=0)
  # The failed first step is counted (over, never under), and nothing trained on the new shard.
  assert dp_model.privacy_ledger.noisy_steps == 1


def test_a_rerun_on_the_same_batches_goes_on_at_the_next_step_and_never_reuses_one(tmp_path):
  config = _config(noise_multiplier=1.0)
  _write_batches(tmp_path / "batches", config)
  history = str(tmp_path / "history")
  first = _dp_model(config, ledger_history=history)
  first.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), epochs=1, verbose=0)
  assert first.privacy_ledger.noisy_steps == 3 and int(first.noisy_steps.numpy()) == 3
  # All 3 steps (one epoch of 40 / 8 = 5, cut at the plan) are spent: a new run has none left.
  again = _dp_model(config, ledger_history=history)
  with pytest.raises(dp_tfx.PrivacyBudgetExhaustedError, match="3 planned noisy steps"):
    again.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0)


def test_a_restart_after_a_crash_takes_the_steps_no_run_recorded(tmp_path):
  config = _config(noise_multiplier=1.0, steps=6)
  _write_batches(tmp_path / "batches", config)
  history = str(tmp_path / "history")
  crashed = _dp_model(config, ledger_history=history)
  taken = []

  class CrashAfterTwoSteps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      taken.append(batch)
      if len(taken) == 2:
        raise RuntimeError("killed")

  with pytest.raises(RuntimeError, match="killed"):
    crashed.fit(
      pb.PoissonBatchStream(tmp_path / "batches", _decode),
      verbose=0,
      callbacks=[CrashAfterTwoSteps()],
    )
  restarted = _dp_model(config, ledger_history=history)
  steps = []
  original = pb.PoissonBatchStream.steps

  def recording_steps(stream, first_step, last_step, pad_multiple=None):
    steps.append((first_step, last_step))
    return original(stream, first_step, last_step, pad_multiple)

  pb.PoissonBatchStream.steps = recording_steps
  try:
    restarted.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0)
  finally:
    pb.PoissonBatchStream.steps = original
  assert steps == [(2, 6)]
  assert restarted.privacy_ledger.noisy_steps == 6  # 2 + 4, every step once


def test_a_second_run_is_refused_while_another_trains_on_the_same_batches(tmp_path):
  config = _config(noise_multiplier=1.0)
  _write_batches(tmp_path / "batches", config)
  history = str(tmp_path / "history")
  live = _dp_model(config, ledger_history=history)
  live._prepare(pb.PoissonBatchStream(tmp_path / "batches", _decode))
  live.privacy_ledger.start_segment(live.plan, seeded=True, steps=3)  # a run mid-training
  other = _dp_model(config, ledger_history=history)
  with pytest.raises(
    ValueError,
    match="two runs must never use the same samples. If that run "
    "was killed, finish its segment first: dp-tfx release-reservation",
  ):
    other.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0)
  assert other.privacy_ledger.noisy_steps == 0


def test_a_stream_needs_a_ledger_that_outlives_the_model(tmp_path):
  _write_batches(tmp_path, _config())
  with pytest.raises(ValueError, match="needs a ledger that outlives this model"):
    _dp_model(_config()).fit(pb.PoissonBatchStream(tmp_path, _decode), verbose=0)


def test_batches_copied_or_repacked_are_the_same_draw_and_never_trained_on_twice(tmp_path):
  config = _config(noise_multiplier=1.0)
  (x, y), _ = _write_batches(tmp_path / "batches", config)
  history = str(tmp_path / "history")
  _dp_model(config, ledger_history=history).fit(
    pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0
  )
  # A copy re-compressed under another file name, with another source: another manifest
  # digest, the same samples.
  manifest = pb.BatchManifest.load(tmp_path / "batches")
  (shard,) = manifest.shards
  copy = tmp_path / "copy"
  copy.mkdir()
  records = [
    r.numpy()
    for r in tf.data.TFRecordDataset(
      str(tmp_path / "batches" / shard.file), compression_type="GZIP"
    )
  ]
  options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)
  with tf.io.TFRecordWriter(str(copy / "renamed.tfrecord.gz"), options=options) as writer:
    for record in records:
      writer.write(record)
  pb.BatchManifest(
    **{
      **manifest.__dict__,
      "source": "/elsewhere",
      "shards": (
        pb.Shard(
          file="renamed.tfrecord.gz",
          first_step=0,
          last_step=3,
          sampled=shard.sampled,
          sha256=files.sha256(str(copy / "renamed.tfrecord.gz")),
        ),
      ),
    }
  ).save(copy)
  assert pb.BatchManifest.load(copy).digest() != manifest.digest()
  again = _dp_model(config, ledger_history=history)
  with pytest.raises((dp_tfx.PrivacyBudgetExhaustedError, ValueError)):
    again.fit(pb.PoissonBatchStream(copy, _decode), verbose=0)
  assert again.privacy_ledger.noisy_steps == 3  # the first run's, nothing more


def test_a_run_that_others_overtook_while_it_prepared_stops_before_a_step(tmp_path):
  config = _config(noise_multiplier=1.0)
  _write_batches(tmp_path / "batches", config)
  history = str(tmp_path / "history")
  late = _dp_model(config, ledger_history=history)
  rehearse = late._rehearse_step

  def another_run_trains_meanwhile(data):
    _dp_model(config, ledger_history=history).fit(
      pb.PoissonBatchStream(tmp_path / "batches", _decode), epochs=1, verbose=0
    )
    rehearse(data)

  late._rehearse_step = another_run_trains_meanwhile
  with pytest.raises(ValueError, match="another run took steps 0 to 2"):
    late.fit(pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0)
  assert late.privacy_ledger.noisy_steps == 3  # the other run's three steps, none of its own


def test_a_stream_carries_its_labels():
  with pytest.raises(ValueError, match="carries its labels"):
    dp_tfx.keras._training_data(object.__new__(pb.PoissonBatchStream), np.zeros(3))


def test_a_restart_goes_on_from_the_weights_of_the_last_checkpoint(tmp_path):
  config = _config(noise_multiplier=1.0, steps=6)
  _write_batches(tmp_path / "batches", config)
  history, checkpoints = str(tmp_path / "history"), str(tmp_path / "checkpoints")
  saved = {}

  class CrashAtStepFive(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      step = int(self.model.noisy_steps.numpy())
      saved[step] = [w.numpy().copy() for w in self.model.model.weights]
      if step == 5:
        raise RuntimeError("killed")

  crashed = _dp_model(config, ledger_history=history)
  with pytest.raises(RuntimeError, match="killed"):
    crashed.fit(
      pb.PoissonBatchStream(tmp_path / "batches", _decode),
      verbose=0,
      callbacks=[dp_tfx.StepCheckpoint(checkpoints, every_steps=2), CrashAtStepFive()],
    )
  restarted = _dp_model(config, ledger_history=history)
  restarted.model(np.zeros([1, 6], np.float32))
  fresh = [w.numpy().copy() for w in restarted.model.weights]
  resume = dp_tfx.StepCheckpoint(checkpoints, every_steps=2)
  starts = {}

  class FirstStep(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
      if not starts:
        starts["step"] = int(self.model.noisy_steps.numpy())
        starts["weights"] = [w.numpy().copy() for w in self.model.model.weights]

  restarted.fit(
    pb.PoissonBatchStream(tmp_path / "batches", _decode), verbose=0, callbacks=[resume, FirstStep()]
  )
  # Saved after steps 2 and 4; killed after step 5 (spent, its update lost): the restart trains
  # step 5 on from the weights of step 4, not from its own fresh ones.
  assert resume.restored_step == 4 and starts["step"] == 5
  for restored, at_four, new in zip(starts["weights"], saved[4], fresh, strict=True):
    np.testing.assert_array_equal(restored, at_four)
    assert not np.array_equal(restored, new)
  assert restarted.privacy_ledger.noisy_steps == 6


def _checkpointed_run(tmp_path, config):
  """A first run of 5 steps on fresh batches, checkpointed; returns its checkpoint's folder."""
  _write_batches(tmp_path / "batches", config)
  first = _dp_model(config, ledger_path=str(tmp_path / "first.json"))
  first.fit(
    pb.PoissonBatchStream(tmp_path / "batches", _decode),
    verbose=0,
    epochs=1,
    callbacks=[dp_tfx.StepCheckpoint(str(tmp_path / "checkpoints"))],
  )
  (folder,) = (tmp_path / "checkpoints").iterdir()
  return folder


def _restart(tmp_path, config, ledger="first.json"):
  restarted = _dp_model(config, ledger_path=str(tmp_path / ledger))
  restarted.fit(
    pb.PoissonBatchStream(tmp_path / "batches", _decode),
    verbose=0,
    callbacks=[dp_tfx.StepCheckpoint(str(tmp_path / "checkpoints"))],
  )
  return restarted


def test_a_checkpoint_no_run_in_the_ledger_wrote_is_refused(tmp_path):
  config = _config(noise_multiplier=1.0, steps=6)
  _checkpointed_run(tmp_path, config)
  # Another ledger (one that lost the first run, or weights planted where checkpoints are
  # kept, naming no recorded run): training would start from a model DP did not make.
  with pytest.raises(ValueError, match="names no run the ledger recorded on this data"):
    _restart(tmp_path, config, ledger="other.json")


def test_a_checkpoint_whose_weights_changed_is_refused(tmp_path):
  config = _config(noise_multiplier=1.0, steps=6)
  folder = _checkpointed_run(tmp_path, config)
  planted = _dp_model(config)  # other weights, saved over the checkpoint's
  planted.model(np.zeros([1, 6], np.float32))
  planted.built = True
  planted.save_weights(str(folder / "model.weights.h5"))
  with pytest.raises(ValueError, match="its weights are not the ones it recorded"):
    _restart(tmp_path, config)


def test_with_a_ledger_key_only_signed_checkpoints_are_restored(tmp_path, monkeypatch):
  import json

  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  config = _config(noise_multiplier=1.0, steps=6)
  folder = _checkpointed_run(tmp_path, config)
  state = json.loads((folder / "checkpoint.json").read_text())
  state["step"] = 1  # anything edited, the signature kept
  (folder / "checkpoint.json").write_text(json.dumps(state))
  with pytest.raises(ValueError, match="not signed with the ledger key"):
    _restart(tmp_path, config)


def test_with_a_ledger_key_a_stream_opens_only_batches_signed_with_it(tmp_path, monkeypatch):
  config = _config(noise_multiplier=1.0)
  _write_batches(tmp_path / "batches", config)
  manifest = pb.BatchManifest.load(tmp_path / "batches")
  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  with pytest.raises(ValueError, match="not signed with the ledger key .no signature"):
    pb.PoissonBatchStream(tmp_path / "batches", _decode)
  manifest.save(tmp_path / "batches", signing.configured_key())
  pb.PoissonBatchStream(tmp_path / "batches", _decode)
  # The manifest edited to a larger N (q 8/80 instead of 8/40), its data digest's count too,
  # keeping the signature: refused.
  edited = dataclasses.replace(
    manifest,
    dataset_size=80,
    sampling_rate=8 / 80,
    data_digest=manifest.data_digest.replace(":40:", ":80:"),
  )
  edited.save(tmp_path / "batches")
  with pytest.raises(ValueError, match="a wrong signature"):
    pb.PoissonBatchStream(tmp_path / "batches", _decode)
