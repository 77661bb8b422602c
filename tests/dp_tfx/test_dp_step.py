"""One DP-SGD step's gradient (dp_step.noisy_gradients) against the slow reference: the clipped
sum of a loop over single examples (or microbatches), plus exactly that step's noise, over the
expected batch size; computed over several physical chunks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dp_tfx import clipping, dp_step, keys, noise, sampling
from dp_tfx.config import DPConfig
from dp_tfx.plan import TrainingPlan
from tests.dp_tfx import models

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
CLIP, SIGMA, SLOTS = 0.1, 1.5, 10


@pytest.mark.parametrize("num_microbatches", [None, 3])
def test_noisy_gradients_are_the_reference_clipped_sum_plus_the_steps_noise(num_microbatches):
  model = models.dense_model()
  x, y = models.batch_for("dense", SLOTS, seed=5)
  mask = np.ones(SLOTS, np.float32)
  mask[[3, 9]] = 0.0  # padding
  plan = TrainingPlan.from_config(
    DPConfig(
      l2_norm_clip=CLIP,
      noise_multiplier=SIGMA,
      batch_size=9,
      steps=5,
      physical_batch_size=4,
      num_microbatches=num_microbatches,
    ),
    90,
  )
  key, step = keys.run_key(seed=7), tf.constant(2, tf.int64)
  chunks = []
  gradients, loss_sum, units = dp_step.noisy_gradients(
    clipping.GradientTaps(model),
    LOSS,
    plan,
    tf.constant(x),
    tf.constant(y),
    tf.constant(mask),
    key,
    step,
    on_chunk=lambda x, y, predictions, m: chunks.append(m),
  )

  assert [len(m) for m in chunks] == [4, 4, 2]  # eager: one call per physical chunk
  np.testing.assert_array_equal(np.concatenate(chunks), mask)
  if num_microbatches is None:
    expected = clipping.reference_clipped_sum(model, LOSS, x, y, CLIP, mask=mask)
  else:
    ids = sampling.microbatch_assignment(key, step, SLOTS, num_microbatches).numpy()
    expected = clipping.reference_clipped_sum(
      model, LOSS, x, y, CLIP, mask=mask, microbatch_ids=ids, num_microbatches=num_microbatches
    )
  step_noise = noise.add_gaussian_noise(
    [tf.zeros(v.shape) for v in model.trainable_variables], SIGMA * CLIP, key, step
  )
  for actual, clipped, drawn in zip(gradients, expected, step_noise, strict=True):
    np.testing.assert_allclose(
      actual, (clipped + drawn.numpy()) / plan.expected_clipping_units, rtol=1e-4, atol=1e-6
    )
  np.testing.assert_allclose(loss_sum, np.sum(LOSS(y, model(x)).numpy() * mask), rtol=1e-5)
  assert units == mask.sum()
