"""Poisson sampling statistics, padding and masks, reproducibility from the run key."""

import numpy as np
import scipy.stats
import tensorflow as tf

from dp_tfx import keys, sampling
from dp_tfx.config import DPConfig
from dp_tfx.plan import TrainingPlan


def test_poisson_sample_sizes_follow_the_binomial():
  n, q, steps = 2000, 0.03, 400
  key = keys.run_key(seed=11)
  sizes = np.array([int(tf.size(sampling.poisson_indices(key, s, n, q))) for s in range(steps)])
  # Mean and variance of Binomial(2000, 0.03): 60 and 58.2. With 400 draws the sample mean's
  # standard error is 0.38; 4 standard errors is the tolerance.
  assert abs(sizes.mean() - n * q) < 4 * np.sqrt(n * q * (1 - q) / steps)
  # A chi-square goodness-of-fit over binned sizes, at the 0.1% level.
  edges = [0, 50, 55, 60, 65, 70, n + 1]
  observed, _ = np.histogram(sizes, bins=edges)
  cdf = scipy.stats.binom.cdf(np.array(edges) - 1, n, q)
  expected = np.diff(cdf) * steps
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_each_example_is_included_with_probability_q():
  n, q, steps = 50, 0.2, 2000
  key = keys.run_key(seed=3)
  counts = np.zeros(n)
  for s in range(steps):
    counts[sampling.poisson_indices(key, s, n, q).numpy()] += 1
  # Each count is Binomial(2000, 0.2): mean 400, sd 17.9; 5 sd covers all 50 with margin.
  assert np.all(np.abs(counts - steps * q) < 5 * np.sqrt(steps * q * (1 - q)))


def test_padding_is_a_whole_number_of_physical_batches_with_a_mask():
  indices = tf.constant([4, 9, 1, 7, 3], tf.int32)
  padded, mask = sampling.pad_indices(indices, 2)
  assert padded.shape[0] == 6
  np.testing.assert_array_equal(mask.numpy(), [1, 1, 1, 1, 1, 0])
  _, empty_mask = sampling.pad_indices(tf.zeros([0], tf.int32), 4)
  np.testing.assert_array_equal(empty_mask.numpy(), [0, 0, 0, 0])  # empty steps still run


def _plan(**overrides):
  values = dict(noise_multiplier=1.0, batch_size=10, steps=20, physical_batch_size=4)
  values.update(overrides)
  return TrainingPlan.from_config(DPConfig(**values), 100)


def test_logical_batches_gather_exactly_the_sampled_examples():
  features = np.arange(100, dtype=np.float32)[:, None]
  labels = np.arange(100, dtype=np.int32)
  plan, key = _plan(), keys.run_key(seed=5)
  for step, (x, y, mask) in enumerate(
    sampling.logical_batches(features, labels, plan, key, 0, plan.steps)
  ):
    chosen = sampling.poisson_indices(key, step, 100, plan.sampling_rate).numpy()
    real = mask.numpy() == 1
    assert len(real) % 4 == 0 and real.sum() == len(chosen)  # never truncated
    np.testing.assert_array_equal(y.numpy()[real], chosen)
    np.testing.assert_array_equal(x.numpy()[real, 0], chosen)


def test_resuming_draws_what_an_uninterrupted_run_draws_and_steps_differ():
  labels = np.arange(100, dtype=np.int32)
  plan, key = _plan(), keys.run_key(seed=9)
  whole = [y.numpy() for _, y, _ in sampling.logical_batches(labels, labels, plan, key, 0, 10)]
  tail = [y.numpy() for _, y, _ in sampling.logical_batches(labels, labels, plan, key, 5, 10)]
  for a, b in zip(whole[5:], tail):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(whole[0], other) for other in whole[1:])


def test_fresh_keys_differ():
  assert not np.array_equal(keys.run_key(None).numpy(), keys.run_key(None).numpy())


def test_shuffled_batches_cover_each_epoch_once():
  labels = np.arange(100, dtype=np.int32)
  plan = _plan(sampling="shuffle", steps=10, physical_batch_size=None)
  batches = [
    y.numpy()
    for _, y, _ in sampling.logical_batches(labels, labels, plan, keys.run_key(seed=1), 0, 10)
  ]
  assert sorted(np.concatenate(batches)) == list(range(100))


def test_microbatch_assignment_is_uniform_and_fresh_per_step():
  key = keys.run_key(seed=2)
  ids = np.concatenate(
    [sampling.microbatch_assignment(key, step, 50, 3).numpy() for step in range(200)]
  )
  assert scipy.stats.chisquare(np.bincount(ids, minlength=3)).pvalue > 1e-3
  assert not np.array_equal(
    sampling.microbatch_assignment(key, 0, 50, 3), sampling.microbatch_assignment(key, 1, 50, 3)
  )
