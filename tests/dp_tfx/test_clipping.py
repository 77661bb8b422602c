"""Clipped gradient sums against a plain loop over single examples (reference_clipped_sum)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dp_tfx import clipping
from tests.dp_tfx import models

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
BATCH = 12


def _assert_close(actual, expected):
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(models.MODELS))
@pytest.mark.parametrize("l2_norm_clip", [0.05, 100.0])  # clipping active / inactive
def test_per_example_clipped_sum_matches_loop(kind, l2_norm_clip):
  model = models.MODELS[kind]()
  x, y = models.batch_for(kind, BATCH)
  mask = np.ones(BATCH, np.float32)
  mask[[2, 7, 11]] = 0.0  # padded slots must contribute exactly nothing
  taps = clipping.GradientTaps(model)
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.constant(mask))
  actual = clipping.per_example_clipped_sum(grads, tf.constant(mask), l2_norm_clip)
  expected = clipping.reference_clipped_sum(model, LOSS, x, y, l2_norm_clip, mask=mask)
  _assert_close(actual, expected)


@pytest.mark.parametrize("kind", sorted(models.MODELS))
def test_microbatch_clipped_sum_matches_loop(kind):
  model = models.MODELS[kind]()
  x, y = models.batch_for(kind, BATCH, seed=1)
  mask = np.ones(BATCH, np.float32)
  mask[[0, 5]] = 0.0
  ids = np.array([0, 1, 2, 0, 1, 2, 3, 3, 0, 1, 2, 3], np.int32)
  taps = clipping.GradientTaps(model)
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.constant(mask))
  sums, counts = clipping.microbatch_sums(grads, tf.constant(mask), tf.constant(ids), 5)
  actual = clipping.clipped_microbatch_sum(sums, counts, 0.1)
  expected = clipping.reference_clipped_sum(model, LOSS, x, y, 0.1, mask=mask,
                                            microbatch_ids=ids, num_microbatches=5)
  _assert_close(actual, expected)


@pytest.mark.parametrize("kind", ["dense", "conv2d", "conv1d", "embedding", "attention"])
def test_fast_taps_cover_every_variable_of_supported_layers(kind):
  taps = clipping.GradientTaps(models.MODELS[kind]())
  assert not taps.fallback_variables


def test_per_example_norms_match_materialised_gradients():
  model = models.conv2d_model()
  x, y = models.batch_for("conv2d", BATCH)
  grads = clipping.GradientTaps(model).backward(tf.constant(x), tf.constant(y), LOSS,
                                                tf.ones([BATCH]))
  materialised = grads.materialize()
  expected = sum(np.sum(np.reshape(np.asarray(g), (BATCH, -1)) ** 2, axis=1) for g in materialised)
  np.testing.assert_allclose(grads.squared_norms(), expected, rtol=1e-5)


def test_fallback_model_really_uses_the_fallback():
  assert clipping.GradientTaps(models.fallback_model()).fallback_variables


def test_batch_normalization_is_refused():
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                            keras.layers.BatchNormalization(), keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="BatchNormalization"):
    clipping.GradientTaps(model)


def test_model_call_is_restored_after_recording():
  model = models.dense_model()
  taps = clipping.GradientTaps(model)
  taps.backward(tf.ones([2, 6]), tf.zeros([2], tf.int32), LOSS, tf.ones([2]))
  assert all("call" not in tap.layer.__dict__ for tap in taps.taps)


def test_scalar_losses_are_refused():
  from dp_tfx.keras import per_example_loss
  with pytest.raises(ValueError, match="one value per example"):
    per_example_loss(lambda y, p: tf.reduce_mean(p))(tf.zeros([2]), tf.zeros([2, 3]))
