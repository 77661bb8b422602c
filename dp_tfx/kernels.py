"""Which kernels this process's TensorFlow runs, decided once per process.

TensorFlow picks its CPU kernels at start-up: oneDNN's where it turns them on (by default only on
x86 CPUs with AVX-512 VNNI/BF16/AMX, Intel's or AMD's, or when TF_ENABLE_ONEDNN_OPTS=1), else
Eigen's (older AMD and Intel, ARM, or TF_ENABLE_ONEDNN_OPTS=0); GPUs use cuDNN. Some fast paths
exist on only some of them: Eigen's Conv2DBackpropFilter rejects grouped convolutions. TensorFlow
has no public query for that, so we run the op once on a tiny input and compare it with the
obvious computation.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf
from absl import logging


def onednn_enabled() -> bool | None:
  """Whether TensorFlow's oneDNN CPU kernels are on in this process (None if it cannot tell)."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top

    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):
    return None


def _reference_filter_grads(inputs, output_grads, kernel_size, strides):
  """Per-example filter gradients of a VALID 2-D convolution, by loops (inputs [B, H, W, C])."""
  batch, _, _, channels = inputs.shape
  _, out_h, out_w, units = output_grads.shape
  grads = np.zeros([batch, kernel_size, kernel_size, channels, units])
  for i in range(kernel_size):
    for j in range(kernel_size):
      window = inputs[:, i : i + strides * out_h : strides, j : j + strides * out_w : strides, :]
      grads[:, i, j] = np.einsum("bhwc,bhwu->bcu", window, output_grads)
  return grads


@functools.lru_cache(maxsize=None)
def grouped_filter_gradients_supported() -> bool:
  """True when Conv2DBackpropFilter computes grouped-convolution filter gradients correctly here.

  Tried on the default device (a GPU where there is one), with 2 groups, a stride and a
  non-square shape; an error or a wrong value both mean "no", so a kernel that accepted the
  shapes but computed something else would not be used.
  """
  rng = np.random.default_rng(0)
  batch, size, channels, units, kernel_size, strides = 2, 5, 3, 2, 2, 2
  inputs = rng.normal(size=[batch, size, size, channels]).astype(np.float32)
  out = (size - kernel_size) // strides + 1
  output_grads = rng.normal(size=[batch, out, out, units]).astype(np.float32)
  expected = _reference_filter_grads(inputs, output_grads, kernel_size, strides)
  folded = np.transpose(inputs, [1, 2, 0, 3]).reshape([1, size, size, batch * channels])
  folded_grads = np.transpose(output_grads, [1, 2, 0, 3]).reshape([1, out, out, batch * units])
  try:
    with tf.init_scope():  # eagerly, also when first asked inside a tf.function
      grads = tf.raw_ops.Conv2DBackpropFilter(
        input=folded,
        filter_sizes=[kernel_size, kernel_size, channels, batch * units],
        out_backprop=folded_grads,
        strides=[1, strides, strides, 1],
        padding="VALID",
      ).numpy()
  except (
    tf.errors.InvalidArgumentError,
    tf.errors.UnimplementedError,
    tf.errors.NotFoundError,
    tf.errors.InternalError,
  ) as error:
    logging.info(
      "grouped convolution filter gradients unavailable (%s); per-example "
      "convolution gradients use unfolded patches",
      str(error).splitlines()[0],
    )
    return False
  per_example = np.transpose(
    grads.reshape([kernel_size, kernel_size, channels, batch, units]), [3, 0, 1, 2, 4]
  )
  if not np.allclose(per_example, expected, rtol=1e-4, atol=1e-4):
    logging.warning(
      "grouped convolution filter gradients are wrong on this TensorFlow; "
      "per-example convolution gradients use unfolded patches"
    )
    return False
  return True


def describe() -> dict:
  """The kernel facts a benchmark or a bug report should carry."""
  gpus = tf.config.list_logical_devices("GPU")
  return {
    "device": "GPU" if gpus else "CPU",
    "gpus": len(gpus),
    "onednn": onednn_enabled(),
    "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    "grouped_conv_filter_gradients": grouped_filter_gradients_supported(),
  }
