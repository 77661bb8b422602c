"""MNIST as TFRecords of tf.Example for a standard ExampleGen: embedded digits, or full MNIST."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dp_tfx import datasets
from dp_tfx.pipelines.mnist_model import IMAGE_KEY, LABEL_KEY

TRAIN_DIR, EVAL_DIR = "train", "eval"


def _example(image: np.ndarray, label: int) -> bytes:
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        IMAGE_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel())),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
      }
    )
  ).SerializeToString()


def write_mnist_tfrecords(
  data_root, source: str = datasets.EMBEDDED, limit: int | None = None
) -> str:
  """Writes train/ and eval/ TFRecord files under `data_root` (skipped if already there); returns
  `data_root` as a string.

  Args:
    data_root: the directory an ImportExampleGen reads: a local path, or any tf.io.gfile
      filesystem (gs://, s3://, ram://) for pipelines that run elsewhere.
    source: "embedded" (offline, 5,000 digits) or "tfds" (full MNIST; needs the network once).
    limit: keep only the first `limit` examples of each split (small test pipelines).
  """
  root = os.fspath(data_root)
  marker = os.path.join(root, f"_COMPLETE_{source}_{limit}")
  if tf.io.gfile.exists(marker):
    return root
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist(source)
  for name, images, labels in ((TRAIN_DIR, x_train, y_train), (EVAL_DIR, x_test, y_test)):
    tf.io.gfile.makedirs(os.path.join(root, name))
    with tf.io.TFRecordWriter(os.path.join(root, name, "data.tfrecord")) as writer:
      for image, label in list(zip(images, labels))[:limit]:
        writer.write(_example(image, label))
  with tf.io.gfile.GFile(marker, "w") as handle:
    handle.write("")
  return root
