"""A unit whose loss or gradient is NaN or infinite contributes exactly zero: the D/D' test (a
batch, and the same batch plus one non-finite example in a padding slot, same noise key) gives
bit-identical noisy sums on every path; a fit with such an example keeps its weights finite."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import dp_tfx
from dp_tfx import clipping, dp_step, keys
from dp_tfx.config import DPConfig
from dp_tfx.plan import TrainingPlan
from tests.dp_tfx import models

CLIP, SIGMA, SLOTS, EXTRA = 0.1, 1.5, 10, 9  # slot EXTRA: padding in D, the extra unit in D'
_CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def overflowing_loss(y_true, y_pred):
  """Cross-entropy, infinite for labels >= 3 (a custom loss that overflows on one example)."""
  scale = tf.where(y_true >= 3, np.inf, 1.0)
  return _CROSS_ENTROPY(tf.minimum(y_true, 2), y_pred) * scale


def all_padding_model():
  """The issue's case: an all-padding sequence under mask_zero + GlobalAveragePooling1D is 0/0."""
  return keras.Sequential(
    [
      keras.Input((5,), dtype="int32"),
      keras.layers.Embedding(models.VOCAB, 4, mask_zero=True),
      keras.layers.GlobalAveragePooling1D(),
      keras.layers.Dense(3),
    ]
  )


def _neighbours(kind, how):
  """(D's x, y, mask), (D''s x, y, mask): D' adds one non-finite unit in D's padding slot."""
  x, y = models.batch_for("embedding" if kind == "all_padding" else kind, SLOTS, seed=5)
  mask = np.ones(SLOTS, np.float32)
  mask[[3, EXTRA]] = 0.0
  x_extra, y_extra, mask_extra = x.copy(), y.copy(), mask.copy()
  mask_extra[EXTRA] = 1.0
  if how == "nan_input":
    x_extra[EXTRA] = np.nan
  elif how == "inf_input":
    x_extra[EXTRA].flat[0] = np.inf
  elif how == "all_padding":
    x_extra[EXTRA] = 0
  else:  # "overflowing_loss"
    y_extra[EXTRA] = 3
  return (x, y, mask), (x_extra, y_extra, mask_extra)


def _noisy_step(model, batch, num_microbatches=None, physical_batch_size=None, jit=False):
  plan = TrainingPlan.from_config(
    DPConfig(
      l2_norm_clip=CLIP,
      noise_multiplier=SIGMA,
      batch_size=9,
      steps=5,
      physical_batch_size=physical_batch_size,
      num_microbatches=num_microbatches,
    ),
    90,
  )
  taps = clipping.GradientTaps(model, static_shapes=jit)
  key, step = keys.run_key(seed=7), tf.constant(2, tf.int64)

  def step_fn(x, y, mask):
    return dp_step.noisy_gradients(
      taps, overflowing_loss, plan, x, y, mask, key, step, static_chunks=jit
    )

  if jit:
    step_fn = tf.function(step_fn, jit_compile=True)
  gradients, loss_sum, units = step_fn(*(tf.constant(t) for t in batch))
  return [g.numpy() for g in gradients], float(loss_sum), float(units)


_PATHS = [
  ("dense", "nan_input", {}),
  ("dense", "inf_input", {}),
  ("dense", "overflowing_loss", {}),
  ("conv2d", "nan_input", {}),
  ("conv1d", "inf_input", {}),
  ("embedding", "overflowing_loss", {}),
  ("all_padding", "all_padding", {}),
  ("fallback", "nan_input", {}),  # the materialised (vectorised) fallback
  ("fallback", "overflowing_loss", dict(num_microbatches=3)),
  ("attention", "overflowing_loss", {}),
  ("recurrent", "overflowing_loss", {}),  # (an all-padding sequence gives RNNs zeros)
  ("dense", "nan_input", dict(num_microbatches=3)),
  ("embedding", "overflowing_loss", dict(num_microbatches=3)),
  ("dense", "nan_input", dict(physical_batch_size=3)),  # accumulation over physical batches
  ("all_padding", "all_padding", dict(physical_batch_size=4)),
  ("dense", "nan_input", dict(physical_batch_size=5, jit=True)),
  ("all_padding", "all_padding", dict(physical_batch_size=5, jit=True)),
  ("conv2d", "overflowing_loss", dict(physical_batch_size=5, jit=True)),
]


@pytest.mark.parametrize(
  "kind, how, options",
  _PATHS,
  ids=["-".join([kind, how, *map(str, options)]) for kind, how, options in _PATHS],
)
def test_one_nonfinite_unit_changes_no_bit_of_the_noisy_sum(kind, how, options):
  model = all_padding_model() if kind == "all_padding" else models.MODELS[kind]()
  without, with_extra = _neighbours(kind, how)
  squared_norms = (
    clipping.GradientTaps(model)
    .backward(
      *(tf.constant(t) for t in with_extra[:2]), overflowing_loss, tf.constant(with_extra[2])
    )
    .squared_norms()
    .numpy()
  )
  assert not np.isfinite(squared_norms[EXTRA])  # D' does hold a non-finite unit
  gradients, loss_sum, units = _noisy_step(model, without, **options)
  gradients_extra, loss_sum_extra, units_extra = _noisy_step(model, with_extra, **options)
  for plain, extra in zip(gradients, gradients_extra, strict=True):
    assert np.all(np.isfinite(extra))
    if kind == "fallback":
      # The fallback's rows are taken again one example at a time (the batch's Jacobian
      # spreads one example's NaN over every row): the same values, summed in another order.
      np.testing.assert_allclose(plain, extra, rtol=1e-6, atol=1e-9)
    else:
      np.testing.assert_array_equal(plain, extra)
  assert (units, loss_sum) == (units_extra, loss_sum_extra) == (8.0, loss_sum)
  assert np.isfinite(loss_sum) and loss_sum > 0


def test_the_reference_leaves_a_nonfinite_unit_out_too():
  model = models.dense_model()
  without, with_extra = _neighbours("dense", "nan_input")
  for plain, extra in zip(
    clipping.reference_clipped_sum(model, overflowing_loss, *without[:2], CLIP, mask=without[2]),
    clipping.reference_clipped_sum(
      model, overflowing_loss, *with_extra[:2], CLIP, mask=with_extra[2]
    ),
    strict=True,
  ):
    np.testing.assert_array_equal(plain, extra)


def test_a_unit_whose_norm_overflows_contributes_zero_not_nan():
  # Finite gradients whose squared norm overflows float32: the clip factor C / inf is 0.
  model = models.dense_model()
  without, with_extra = _neighbours("dense", "nan_input")
  huge = with_extra[0].copy()
  huge[EXTRA] = 1e30
  gradients, *_ = _noisy_step(model, without)
  gradients_huge, *_ = _noisy_step(model, (huge, *with_extra[1:]))
  for plain, extra in zip(gradients, gradients_huge, strict=True):
    np.testing.assert_array_equal(plain, extra)


def _fit(model, x, y, loss):
  dp_model = dp_tfx.make_private(
    model,
    dp_tfx.DPConfig(
      l2_norm_clip=1.0, noise_multiplier=1.0, batch_size=8, steps=10, delta=1e-5, seed=4
    ),
  )
  dp_model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss, metrics=["accuracy"])
  return dp_model, dp_model.fit(x, y, verbose=0)


@pytest.mark.parametrize("kind", ["dense", "all_padding"])
def test_a_fit_with_a_nonfinite_example_keeps_every_weight_and_log_finite(kind):
  x, y = models.batch_for("embedding" if kind == "all_padding" else kind, 40, seed=2)
  # Ten of the 40 examples are non-finite. The sampling is fresh per run (its key folds in the
  # run id), so with q = 0.2 over 10 steps none of them is sampled with probability 0.8^100.
  nonfinite = slice(0, 10)
  if kind == "all_padding":
    x[:, 0] = np.where(x[:, 0] == 0, 1, x[:, 0])  # every other sequence has a real token
    x[nonfinite] = 0
    model = all_padding_model()
  else:
    x[nonfinite] = np.nan
    model = models.dense_model()
  dp_model, history = _fit(model, x, y, "sparse_categorical_crossentropy")
  assert int(dp_model.noisy_steps.numpy()) == 10
  assert all(np.all(np.isfinite(w)) for w in dp_model.model.get_weights())
  for name in ("loss", "accuracy"):
    assert np.all(np.isfinite(history.history[name])), name
  # The training log says how often a non-finite example was sampled: at most 10 x 10 times.
  assert 1 <= sum(history.history["nonfinite_units"]) <= 100


_TWO_REPLICA_SCRIPT = """
import json
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from dp_tfx import clipping, dp_step, keys
from dp_tfx.config import DPConfig
from dp_tfx.plan import TrainingPlan
from tests.dp_tfx import models
from tests.dp_tfx.test_nonfinite_units import overflowing_loss

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
plan = TrainingPlan.from_config(DPConfig(l2_norm_clip=0.1, noise_multiplier=1.5, batch_size=9,
                                         steps=5, physical_batch_size=10), 90)
with strategy.scope():
  model = models.dense_model()
  taps = clipping.GradientTaps(model)
key = keys.run_key(seed=7)
x, y = models.batch_for("dense", 10, seed=5)

@tf.function
def step(x, y, mask):
  gradients, _, units = dp_step.noisy_gradients(taps, overflowing_loss, plan, x, y, mask, key,
                                                tf.constant(2, tf.int64))
  return gradients, units

def summed(x, y, mask):
  halves = lambda t: strategy.experimental_distribute_values_from_function(
      lambda context: t[5 * context.replica_id_in_sync_group:][:5])
  gradients, units = strategy.run(step, args=tuple(halves(tf.constant(t)) for t in (x, y, mask)))
  return ([strategy.reduce("SUM", g, axis=None).numpy() for g in gradients],
          float(strategy.reduce("SUM", units, axis=None)))

mask = np.ones(10, np.float32)
mask[9] = 0.0
nan_x, nan_mask = x.copy(), mask.copy()
nan_x[9], nan_mask[9] = np.nan, 1.0
(plain, units), (extra, units_extra) = summed(x, y, mask), summed(nan_x, y, nan_mask)
print(json.dumps({"identical": all(np.array_equal(a, b) for a, b in zip(plain, extra)),
                  "finite": all(np.all(np.isfinite(b)) for b in extra),
                  "units": [units, units_extra]}))
"""


def test_two_replicas_leave_a_nonfinite_unit_out_bit_for_bit():
  completed = subprocess.run(
    [sys.executable, "-c", _TWO_REPLICA_SCRIPT],
    capture_output=True,
    text=True,
    check=False,
    timeout=300,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  assert result == {"identical": True, "finite": True, "units": [9.0, 9.0]}
