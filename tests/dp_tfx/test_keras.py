"""make_private / DPModel: one DP step equals the obvious computation; the ledger counts
honestly."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_tfx
from dp_tfx import clipping, sampling
from dp_tfx import keras as dp_keras
from dp_tfx.keras import per_example_loss
from tests.dp_tfx import models
from tests.dp_tfx.callbacks import MeanwhileAndStop

N = 40
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
PER_EXAMPLE_LOSS = per_example_loss(LOSS)


def _data(kind="dense"):
  return models.batch_for(kind, N, seed=3)


def _dp_model(kind="dense", jit_compile=False, learning_rate=1.0, ledger_path=None, **config):
  values = dict(l2_norm_clip=0.3, noise_multiplier=0.0, batch_size=8, steps=1, seed=21, delta=1e-5)
  values.update(config)
  # One run id: two models of one seed then draw the same samples and noise (runs of other run
  # ids draw others: test_concurrent_runs_with_the_same_seed_draw_different_noise).
  dp_model = dp_tfx.make_private(
    models.MODELS[kind](), dp_tfx.DPConfig(**values), ledger_path=ledger_path, run_id="test-run"
  )
  dp_model.compile(
    optimizer=keras.optimizers.SGD(learning_rate),
    loss=LOSS,
    metrics=["accuracy"],
    jit_compile=jit_compile,
  )
  return dp_model


def _sampled_batch(dp_model, x, y, step=0):
  """The examples the model's own sampler chose for `step` (same run key)."""
  key = dp_model._segment_key()  # the key the next fit will use
  ((bx, by, mask),) = sampling.logical_batches(x, y, dp_model.plan, key, step, step + 1)
  real = mask.numpy() == 1
  microbatches = sampling.microbatch_assignment(
    key, step, len(real), dp_model.plan.num_microbatches or 1
  )
  return bx.numpy()[real], by.numpy()[real], microbatches.numpy()[real]


@pytest.mark.parametrize(
  "kind", ["dense", "conv2d", "embedding", pytest.param("recurrent", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("physical_batch_size", [None, 3])  # 3 forces several physical batches
def test_one_step_is_the_clipped_mean_gradient(kind, jit_compile, physical_batch_size):
  x, y = _data(kind)
  dp_model = _dp_model(kind, jit_compile, physical_batch_size=physical_batch_size)
  dp_model._prepare(dp_keras._training_data(x, y))
  before = [v.numpy().copy() for v in dp_model.trainable_variables]
  bx, by, _ = _sampled_batch(dp_model, x, y)
  expected_sum = clipping.reference_clipped_sum(dp_model.model, PER_EXAMPLE_LOSS, bx, by, 0.3)
  dp_model.fit(x, y, verbose=0)
  for b, a, s in zip(before, dp_model.trainable_variables, expected_sum, strict=True):
    # SGD with learning rate 1: w' = w - clipped_sum / expected batch size (8).
    np.testing.assert_allclose(b - a.numpy(), s / 8, rtol=1e-4, atol=1e-6)


def test_one_microbatched_step_is_the_mean_of_clipped_microbatch_means():
  x, y = _data()
  dp_model = _dp_model(num_microbatches=4, physical_batch_size=3)
  dp_model._prepare(dp_keras._training_data(x, y))
  before = [v.numpy().copy() for v in dp_model.trainable_variables]
  bx, by, ids = _sampled_batch(dp_model, x, y)
  expected_sum = clipping.reference_clipped_sum(
    dp_model.model, PER_EXAMPLE_LOSS, bx, by, 0.3, microbatch_ids=ids, num_microbatches=4
  )
  dp_model.fit(x, y, verbose=0)
  for b, a, s in zip(before, dp_model.trainable_variables, expected_sum, strict=True):
    np.testing.assert_allclose(b - a.numpy(), s / 4, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("in_pipeline", [True, False])
def test_noise_added_to_the_step_has_std_sigma_c_over_b(monkeypatch, in_pipeline):
  if not in_pipeline:  # as for a model too large to carry its noise in prefetched batches
    monkeypatch.setattr(dp_tfx.keras, "_PIPELINE_NOISE_MAX_VALUES", 0)
  x, y = _data()
  updates = {}
  for sigma in (0.0, 2.0):
    dp_model = _dp_model(noise_multiplier=sigma)
    start = [v.numpy().copy() for v in dp_model.model.trainable_variables]
    dp_model.fit(x, y, verbose=0)
    updates[sigma] = np.concatenate(
      [(s - v.numpy()).ravel() for s, v in zip(start, dp_model.model.trainable_variables)]
    )
  noise = updates[2.0] - updates[0.0]  # same seed: same sample, same clipped sum
  # 53 parameters: the sample std's relative standard error is ~10%; allow 35%.
  assert noise.size == 53
  assert abs(noise.std() / (2.0 * 0.3 / 8) - 1) < 0.35


def test_the_input_pipeline_carries_the_host_samplers_noise_for_each_step(monkeypatch):
  # Small models get each step's noise from the input pipeline (noise.host_gaussian_noise, for
  # the run's key and the step); the step must not draw noise itself.
  monkeypatch.setattr(dp_tfx.noise, "add_gaussian_noise", None)
  x, y = _data()
  updates = {}
  for sigma in (0.0, 2.0):
    keras.utils.set_random_seed(5)  # the same initial weights
    dp_model = _dp_model(noise_multiplier=sigma)
    dp_model._prepare(dp_keras._training_data(x, y))
    key = dp_model._segment_key()  # the key the fit will use
    variables = dp_model.model.trainable_variables
    start = [v.numpy().copy() for v in variables]
    dp_model.fit(x, y, verbose=0)
    updates[sigma] = [s - v.numpy() for s, v in zip(start, variables)]
  drawn = dp_tfx.noise.host_gaussian_noise(variables, 2.0 * 0.3, key)(tf.constant(0, tf.int64))
  for noisy, noiseless, step_noise in zip(updates[2.0], updates[0.0], drawn, strict=True):
    # Same sample, same clipped sum; SGD with learning rate 1: w' = w - (sum + noise) / 8.
    np.testing.assert_allclose(noisy - noiseless, step_noise.numpy() / 8, rtol=1e-5, atol=1e-7)


def test_each_pipeline_element_carries_its_own_steps_noise():
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.0, steps=6)
  data = dp_keras._training_data(x, y)
  dp_model._prepare(data)
  host_noise = dp_tfx.noise.host_gaussian_noise(
    dp_model.model.trainable_variables, 0.3, dp_model._key
  )
  elements = list(dp_model._distributed_batches(data, 2, 5, replicas=1))
  assert len(elements) == 3
  for step, (*_, carried) in zip(range(2, 5), elements):
    for carried_part, drawn_part in zip(
      carried, host_noise(tf.constant(step, tf.int64)), strict=True
    ):
      np.testing.assert_array_equal(carried_part, drawn_part)
  first_values = [np.ravel(element[-1][0]) for element in elements]
  assert len({tuple(values) for values in first_values}) == 3  # fresh noise every step


def test_ledger_counts_every_step_and_fit_stops_at_the_plan(tmp_path):
  x, y = _data()
  path = tmp_path / "ledger.json"
  dp_model = _dp_model(noise_multiplier=1.0, steps=7, ledger_path=path)
  history = dp_model.fit(x, y, verbose=0)
  ledger = dp_tfx.PrivacyLedger.load(path)
  assert ledger.noisy_steps == 7 == int(dp_model.noisy_steps.numpy())
  assert history.history["epsilon"][-1] == pytest.approx(ledger.epsilon(1e-5))
  assert np.isfinite(dp_model.epsilon())
  with pytest.raises(dp_tfx.PrivacyBudgetExhaustedError, match="out of privacy budget"):
    dp_model.fit(x, y, verbose=0)
  assert dp_tfx.PrivacyLedger.load(path).noisy_steps == 7


def test_asking_for_more_epochs_than_planned_is_refused_before_training(tmp_path):
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.0, steps=5)  # steps_per_epoch = ceil(40/8) = 5
  with pytest.raises(dp_tfx.PrivacyBudgetExhaustedError, match="only 5 of the 5"):
    dp_model.fit(x, y, epochs=2, verbose=0)
  assert dp_model.privacy_ledger.noisy_steps == 0


class _Crash(keras.callbacks.Callback):
  def on_train_batch_end(self, batch, logs=None):
    if batch == 2:
      raise KeyboardInterrupt("killed")


def test_a_crashed_run_leaves_a_ledger_with_every_step_it_took(tmp_path):
  x, y = _data()
  path = tmp_path / "ledger.json"
  dp_model = _dp_model(noise_multiplier=1.0, steps=10, ledger_path=path)
  with pytest.raises(KeyboardInterrupt):
    dp_model.fit(x, y, verbose=0, callbacks=[_Crash()])
  assert int(dp_model.noisy_steps.numpy()) == 3
  assert dp_tfx.PrivacyLedger.load(path).noisy_steps == 3
  # Starting over on the same data adds to what was spent.
  again = _dp_model(noise_multiplier=1.0, steps=10, ledger_path=path)
  again.fit(x, y, verbose=0)
  assert dp_tfx.PrivacyLedger.load(path).noisy_steps == 13


def test_a_ledger_file_takes_one_fit_at_a_time(tmp_path):
  # Two fits on one ledger_path at once lost steps (each rewrote the file with its own view):
  # the second is refused while the first trains, and continues the file once it ended.
  x, y = _data()
  path = tmp_path / "ledger.json"
  first = _dp_model(noise_multiplier=1.0, steps=10, ledger_path=path)
  second = _dp_model(noise_multiplier=1.0, steps=10, ledger_path=path)

  def second_fits():
    with pytest.raises(dp_tfx.LedgerError, match="is in use: .*still training"):
      second.fit(x, y, verbose=0)

  first.fit(x, y, verbose=0, callbacks=[MeanwhileAndStop(second_fits)])
  assert dp_tfx.PrivacyLedger.load(path).noisy_steps == 3
  second.fit(x, y, verbose=0)
  assert dp_tfx.PrivacyLedger.load(path).noisy_steps == 13 == second.privacy_ledger.noisy_steps


def test_refuses_arguments_that_would_break_the_guarantee():
  x, y = _data()
  dp_model = _dp_model()
  for bad in (dict(batch_size=4), dict(sample_weight=np.ones(N)), dict(shuffle=True)):
    with pytest.raises(ValueError, match="DP fit does not take"):
      dp_model.fit(x, y, verbose=0, **bad)


def test_fit_on_other_data_is_refused():
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.0, steps=2)
  dp_model.fit(x, y, epochs=1, verbose=0)
  with pytest.raises(ValueError, match="other data"):
    dp_model.fit(x + 1, y, verbose=0)


def test_a_dataset_of_examples_trains_like_arrays():
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.0, steps=2)
  dp_model.fit(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)
  assert dp_model.privacy_ledger.dataset_size == N


@pytest.mark.parametrize(
  "loss",
  [
    "sparse_categorical_crossentropy",
    keras.losses.sparse_categorical_crossentropy,
    keras.losses.SparseCategoricalCrossentropy(),
  ],
)
def test_per_example_losses_from_any_keras_loss(loss):
  y = tf.constant([0, 1])
  probabilities = tf.constant([[0.9, 0.1], [0.2, 0.8]])
  np.testing.assert_allclose(
    per_example_loss(loss)(y, probabilities), -np.log([0.9, 0.8]), rtol=1e-5
  )


def test_sequence_losses_are_averaged_per_example():
  y = tf.constant([[0, 1], [1, 1]])
  probabilities = tf.constant([[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.2, 0.8]]])
  np.testing.assert_allclose(
    per_example_loss("sparse_categorical_crossentropy")(y, probabilities),
    [-(np.log(0.9) + np.log(0.5)) / 2, -np.log(0.8)],
    rtol=1e-5,
  )


def test_trained_model_exports_for_serving(tmp_path):
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.0, steps=2)
  dp_model.fit(x, y, verbose=0)
  dp_model.model.export(str(tmp_path / "serving"), verbose=False)
  reloaded = tf.saved_model.load(str(tmp_path / "serving"))
  np.testing.assert_allclose(
    reloaded.serve(tf.constant(x)), dp_model.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
  )


def test_ledger_file_names_the_facts_of_the_run(tmp_path):
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.5, steps=3, ledger_path=tmp_path / "l.json")
  dp_model.fit(x, y, verbose=0)
  segment = json.loads((tmp_path / "l.json").read_text())["body"]["segments"][0]
  assert segment["sampling"] == "poisson"
  assert segment["sampling_rate"] == pytest.approx(8 / N)
  assert segment["noise_multiplier"] == 1.5 and segment["l2_norm_clip"] == 0.3
  assert segment["noisy_steps"] == 3


@pytest.mark.parametrize(
  "make_optimizer", [lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.RMSprop(0.01)]
)
def test_any_keras_optimizer_receives_the_clipped_mean_gradient(make_optimizer):
  x, y = _data()
  dp_model = dp_tfx.make_private(
    models.dense_model(),
    dp_tfx.DPConfig(l2_norm_clip=0.3, noise_multiplier=0.0, batch_size=8, steps=1, seed=21),
  )
  dp_model.compile(optimizer=make_optimizer(), loss=LOSS)
  dp_model._prepare(dp_keras._training_data(x, y))
  shadow = models.dense_model()
  shadow.set_weights(dp_model.model.get_weights())
  bx, by, _ = _sampled_batch(dp_model, x, y)
  expected = clipping.reference_clipped_sum(shadow, PER_EXAMPLE_LOSS, bx, by, 0.3)
  optimizer = make_optimizer()
  optimizer.apply_gradients(
    [
      (tf.constant(g / 8, tf.float32), v)
      for g, v in zip(expected, shadow.trainable_variables, strict=True)
    ]
  )
  dp_model.fit(x, y, verbose=0)
  for actual, wanted in zip(dp_model.model.get_weights(), shadow.get_weights(), strict=True):
    np.testing.assert_allclose(actual, wanted, rtol=1e-4, atol=1e-6)


_MULTI_REPLICA_SCRIPT = """
import json, sys
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, dp_tfx

rng = np.random.default_rng(3)
x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64).astype("int32")

def updates(strategy, sigma):
  with strategy.scope():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(60, activation="tanh"),
                              keras.layers.Dense(3)])
    start = [w.copy() for w in model.get_weights()]
    dp_model = dp_tfx.make_private(model, dp_tfx.DPConfig(
        l2_norm_clip=0.3, noise_multiplier=sigma, batch_size=16, steps=1, seed=21,
        physical_batch_size=16), run_id="replicas")  # one run id: the same samples
    dp_model.compile(optimizer=keras.optimizers.SGD(1.0),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  dp_model.fit(x, y, verbose=0)
  return np.concatenate([(s - w).ravel() for s, w in zip(start, model.get_weights())])

one = tf.distribute.get_strategy()
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
clean_one, clean_two, noisy_two = updates(one, 0.0), updates(two, 0.0), updates(two, 2.0)
noise = noisy_two - clean_two
print(json.dumps({"max_difference": float(np.abs(clean_one - clean_two).max()),
                  "noise_std": float(noise.std()), "expected_std": 2.0 * 0.3 / 16,
                  "parameters": int(noise.size)}))
"""


def test_two_replicas_take_the_same_step_and_add_one_draw_of_noise():
  import subprocess
  import sys

  completed = subprocess.run(
    [sys.executable, "-c", _MULTI_REPLICA_SCRIPT],
    capture_output=True,
    text=True,
    check=False,
    timeout=300,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  # With sigma = 0, two replicas compute exactly the single-device step.
  assert result["max_difference"] < 1e-6
  # The two replicas' noise (std sigma*C/sqrt(2) each) sums to std sigma*C, divided by B = 16:
  # 603 parameters give the sample std a relative standard error of 2.9%; allow 12%.
  assert result["parameters"] == 603
  assert abs(result["noise_std"] / result["expected_std"] - 1) < 0.12


def test_several_steps_per_execution_are_refused():
  dp_model = dp_tfx.make_private(
    models.dense_model(), dp_tfx.DPConfig(noise_multiplier=1.0, batch_size=8, steps=2)
  )
  with pytest.raises(ValueError, match="steps_per_execution=1"):
    dp_model.compile(optimizer="sgd", loss=LOSS, steps_per_execution=4)


def test_train_on_batch_is_refused():
  x, y = _data()
  dp_model = _dp_model(noise_multiplier=1.0, steps=2)
  with pytest.raises(RuntimeError, match="use fit"):
    dp_model.train_on_batch(x[:8], y[:8])


def test_a_restart_with_the_same_seed_draws_fresh_noise(tmp_path):
  x, y = _data()
  path = tmp_path / "ledger.json"
  updates = []
  for _ in range(2):  # the same seed, the same start weights, a continued ledger
    dp_model = _dp_model(noise_multiplier=1.0, steps=1, ledger_path=path)
    dp_model.model.set_weights([np.zeros_like(w) for w in dp_model.model.get_weights()])
    dp_model.fit(x, y, verbose=0)
    updates.append(np.concatenate([w.ravel() for w in dp_model.model.get_weights()]))
  assert not np.allclose(updates[0], updates[1])
  ledger = dp_tfx.PrivacyLedger.load(path)
  assert [segment.seeded for segment in ledger.segments] == [True, True]


def test_fit_before_compile_is_refused_readably():
  x, y = _data()
  dp_model = dp_tfx.make_private(
    models.dense_model(), dp_tfx.DPConfig(noise_multiplier=1.0, batch_size=8, steps=2)
  )
  with pytest.raises(RuntimeError, match="compile the DP model .optimizer, loss. before fit"):
    dp_model.fit(x, y, verbose=0)


def test_concurrent_runs_with_the_same_seed_draw_different_noise(tmp_path):
  # Two runs opening one history at once see the same segments: their run ids keep their
  # samples and noise apart; one run id reproduces its key.
  x, y = _data()
  keys_by_run = {}
  for run_id in ("first", "second", "first"):
    dp_model = dp_tfx.make_private(
      models.dense_model(),
      dp_tfx.DPConfig(noise_multiplier=1.0, batch_size=8, steps=1, seed=21, delta=1e-5),
      ledger_history=tmp_path / run_id,
      run_id=run_id,
    )
    dp_model.compile(optimizer="sgd", loss=LOSS)
    dp_model._prepare(dp_keras._training_data(x, y))
    keys_by_run.setdefault(run_id, []).append(tuple(dp_model._segment_key().numpy()))
  assert keys_by_run["first"][0] == keys_by_run["first"][1]
  assert keys_by_run["first"][0] != keys_by_run["second"][0]
