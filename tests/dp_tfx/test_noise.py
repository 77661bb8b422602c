"""Gaussian noise: the right standard deviation, fresh every step and every variable."""

import numpy as np
from scipy import stats
import tensorflow as tf

from dp_tfx import keys, noise


def test_noise_std_matches_sigma_times_clip():
  sigma, clip = 1.3, 0.7
  zeros = [tf.zeros([200, 100]), tf.zeros([50])]
  noisy = noise.add_gaussian_noise(zeros, sigma * clip, keys.run_key(seed=4), tf.constant(0))
  values = np.concatenate([t.numpy().ravel() for t in noisy])
  # 20,050 draws: the sample std's relative standard error is 1/sqrt(2n) = 0.5%; allow 2%.
  assert abs(values.std() / (sigma * clip) - 1) < 0.02
  assert abs(values.mean()) < 4 * sigma * clip / np.sqrt(values.size)


def test_successive_steps_and_variables_draw_different_noise():
  key = keys.run_key(seed=4)
  zeros = [tf.zeros([1000]), tf.zeros([1000])]
  first = noise.add_gaussian_noise(zeros, 1.0, key, tf.constant(0))
  second = noise.add_gaussian_noise(zeros, 1.0, key, tf.constant(1))
  assert abs(np.corrcoef(first[0].numpy(), second[0].numpy())[0, 1]) < 0.15
  assert abs(np.corrcoef(first[0].numpy(), first[1].numpy())[0, 1]) < 0.15


def test_a_fixed_key_reproduces_the_noise():
  zeros = [tf.zeros([10])]
  a = noise.add_gaussian_noise(zeros, 1.0, keys.run_key(seed=8), tf.constant(3))
  b = noise.add_gaussian_noise(zeros, 1.0, keys.run_key(seed=8), tf.constant(3))
  np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_tensors_of_unknown_shape_get_reproducible_noise_of_their_shape():
  key = keys.run_key(seed=5)
  traced = tf.function(
    lambda a, b: noise.add_gaussian_noise([a, b], 1.0, key, tf.constant(2)),
    input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None])],
  )
  first = traced(tf.zeros([3, 4]), tf.zeros([7]))
  again = traced(tf.zeros([3, 4]), tf.zeros([7]))
  assert [t.shape for t in first] == [(3, 4), (7,)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not set(first[0].numpy().ravel()) & set(first[1].numpy().ravel())  # separate draws


def test_large_variables_get_draws_of_their_own_and_all_draws_differ(monkeypatch):
  # Shrink the shared-draw size so a small test crosses it: [30] and [50] exceed 40 values.
  monkeypatch.setattr(noise, "_DRAW_VALUES", 40)
  assert noise._draw_groups([10, 20, 30, 50, 5, 5]) == [[0, 1], [2], [3], [4, 5]]
  zeros = [
    tf.zeros([10]),
    tf.zeros([20]),
    tf.zeros([30]),
    tf.zeros([50]),
    tf.zeros([5]),
    tf.zeros([5]),
  ]
  noisy = noise.add_gaussian_noise(zeros, 1.0, keys.run_key(seed=6), tf.constant(0))
  values = np.concatenate([t.numpy() for t in noisy])
  # Separate draws must come from separate streams: no value repeats across the 120.
  assert len(np.unique(values)) == values.size
  assert abs(values.std() - 1) < 0.3  # 120 draws: the sample std's standard error is 6.5%


def test_float64_tensors_get_float64_noise():
  noisy = noise.add_gaussian_noise(
    [tf.zeros([1000], tf.float64)], 1.0, keys.run_key(seed=7), tf.constant(0)
  )
  values = noisy[0].numpy()
  assert values.dtype == np.float64
  assert np.any(values != values.astype(np.float32).astype(np.float64))  # not float32 precision


def _host_draw(sizes, stddev, key, step, dtype=tf.float32):
  tensors = [tf.zeros(size, dtype) for size in sizes]
  return noise.host_gaussian_noise(tensors, stddev, key)(tf.constant(step, tf.int64))


def test_host_noise_is_normal_with_std_sigma_times_clip():
  values = np.concatenate(
    [t.numpy().ravel() for t in _host_draw([[300, 200], [1001]], 0.7, keys.run_key(4), 0)]
  )
  assert values.size == 61001 and values.dtype == np.float32
  # 61,001 draws at a fixed seed: the mean's standard error is 0.7 / 247, the std's 0.29%,
  # skewness's 0.0099, excess kurtosis's 0.0198; allow about 4 standard errors each.
  assert abs(values.mean()) < 4 * 0.7 / np.sqrt(values.size)
  assert abs(values.std() / 0.7 - 1) < 0.012
  assert abs(stats.skew(values)) < 0.04
  assert abs(stats.kurtosis(values)) < 0.08
  # Normality, the whole distribution: Kolmogorov-Smirnov and D'Agostino-Pearson.
  assert stats.kstest(values / 0.7, "norm").pvalue > 0.01
  assert stats.normaltest(values).pvalue > 0.01
  # Box-Muller's two halves (cosines, sines of shared radii) are independent normals too.
  half = values.size // 2
  assert abs(np.corrcoef(values[:half], values[half : 2 * half])[0, 1]) < 4 / np.sqrt(half)
  assert abs(np.corrcoef(values[:half] ** 2, values[half : 2 * half] ** 2)[0, 1]) < 4 / np.sqrt(
    half
  )


def test_host_noise_tails_follow_the_normal():
  values = _host_draw([[1_000_000]], 1.0, keys.run_key(9), 0)[0].numpy()
  # P(|z| > 3) = 0.0027: 2,700 expected of 1M (standard deviation 52); P(|z| > 4.5) = 6.8e-6.
  assert abs(np.sum(np.abs(values) > 3) - 2700) < 4 * 52
  assert 0 < np.sum(np.abs(values) > 4.5) < 25
  assert np.all(np.isfinite(values))


def test_host_noise_is_fresh_every_step_and_reproducible_for_a_key():
  key = keys.run_key(seed=4)
  first, second = (_host_draw([[1000]], 1.0, key, step)[0].numpy() for step in (0, 1))
  assert abs(np.corrcoef(first, second)[0, 1]) < 0.15
  np.testing.assert_array_equal(first, _host_draw([[1000]], 1.0, key, 0)[0].numpy())
  other_key = _host_draw([[1000]], 1.0, keys.run_key(seed=5), 0)[0].numpy()
  assert abs(np.corrcoef(first, other_key)[0, 1]) < 0.15


def test_host_noise_takes_each_tensors_shape_and_dtype():
  drawn = noise.host_gaussian_noise(
    [tf.zeros([2, 3]), tf.zeros([5], tf.float64)], 1.0, keys.run_key(3)
  )(tf.constant(0, tf.int64))
  assert [(t.shape, t.dtype) for t in drawn] == [((2, 3), tf.float32), ((5,), tf.float64)]
  float64 = _host_draw([[1000]], 1.0, keys.run_key(7), 0, tf.float64)[0].numpy()
  assert float64.dtype == np.float64
  assert np.any(float64 != float64.astype(np.float32).astype(np.float64))  # not float32 precision


def test_host_noise_runs_no_python_in_the_input_pipeline():
  # A tf.data thread waiting for the GIL (tf.numpy_function) deadlocked the process when the main
  # thread, holding it, freed an interrupted fit's iterator.
  step_noise = noise.host_gaussian_noise([tf.zeros([4, 3])], 1.0, keys.run_key(2))
  pipeline = tf.data.Dataset.range(3).map(step_noise)
  graph = pipeline._as_serialized_graph().numpy()
  assert b"PyFunc" not in graph and b"StatelessRandomUniformV2" in graph
  assert len({tuple(np.ravel(element)) for element in pipeline.as_numpy_iterator()}) == 3
