"""Gaussian noise: the right standard deviation, fresh every step and every variable."""

import numpy as np
import tensorflow as tf

from dp_tfx import noise


def test_noise_std_matches_sigma_times_clip():
  sigma, clip = 1.3, 0.7
  zeros = [tf.zeros([200, 100]), tf.zeros([50])]
  noisy = noise.add_gaussian_noise(zeros, sigma * clip, noise.run_key(seed=4), tf.constant(0))
  values = np.concatenate([t.numpy().ravel() for t in noisy])
  # 20,050 draws: the sample std's relative standard error is 1/sqrt(2n) = 0.5%; allow 2%.
  assert abs(values.std() / (sigma * clip) - 1) < 0.02
  assert abs(values.mean()) < 4 * sigma * clip / np.sqrt(values.size)


def test_successive_steps_and_variables_draw_different_noise():
  key = noise.run_key(seed=4)
  zeros = [tf.zeros([1000]), tf.zeros([1000])]
  first = noise.add_gaussian_noise(zeros, 1.0, key, tf.constant(0))
  second = noise.add_gaussian_noise(zeros, 1.0, key, tf.constant(1))
  assert abs(np.corrcoef(first[0].numpy(), second[0].numpy())[0, 1]) < 0.15
  assert abs(np.corrcoef(first[0].numpy(), first[1].numpy())[0, 1]) < 0.15


def test_a_fixed_key_reproduces_the_noise():
  zeros = [tf.zeros([10])]
  a = noise.add_gaussian_noise(zeros, 1.0, noise.run_key(seed=8), tf.constant(3))
  b = noise.add_gaussian_noise(zeros, 1.0, noise.run_key(seed=8), tf.constant(3))
  np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


def test_tensors_of_unknown_shape_get_the_same_noise_as_known_ones():
  key = noise.run_key(seed=5)
  zeros = [tf.zeros([3, 4]), tf.zeros([7])]
  known = noise.add_gaussian_noise(zeros, 1.0, key, tf.constant(2))
  traced = tf.function(lambda a, b: noise.add_gaussian_noise([a, b], 1.0, key, tf.constant(2)),
                       input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None])])
  for expected, actual in zip(known, traced(*zeros)):
    np.testing.assert_array_equal(expected.numpy(), actual.numpy())
