"""The kernel probe and both per-example convolution paths, whatever this machine's CPU picks.

TensorFlow turns oneDNN on by default only on some x86 CPUs; Eigen's kernels (oneDNN off) reject
grouped-convolution filter gradients. The probe runs in subprocesses with oneDNN forced off and on,
so both kernel families are checked on every machine.
"""

import json
import os
import platform
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dp_tfx import clipping, kernels
from tests.dp_tfx import models

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
BATCH = 10

CONV_PATHS = [
  pytest.param(False, id="unfolded"),
  pytest.param(
    True,
    id="grouped",
    marks=pytest.mark.skipif(
      not kernels.grouped_filter_gradients_supported(),
      reason="this process's kernels (oneDNN off) have no grouped filter gradients",
    ),
  ),
]


def _describe_with_onednn(setting: str) -> dict:
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3")
  output = subprocess.run(
    [
      sys.executable,
      "-c",
      "import json; from dp_tfx import kernels; print(json.dumps(kernels.describe()))",
    ],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  ).stdout
  return json.loads(output.strip().splitlines()[-1])


def test_probe_finds_no_grouped_filter_gradients_with_onednn_off():
  described = _describe_with_onednn("0")
  assert described["onednn"] is False
  assert described["grouped_conv_filter_gradients"] is False
  assert described["device"] == "CPU"


@pytest.mark.skipif(
  platform.machine() not in ("x86_64", "AMD64"),
  reason="oneDNN's grouped convolution kernels are checked on x86-64",
)
def test_probe_finds_grouped_filter_gradients_with_onednn_on():
  described = _describe_with_onednn("1")
  assert described["onednn"] is True
  assert described["grouped_conv_filter_gradients"] is True


def test_taps_use_grouped_convolutions_only_where_supported(monkeypatch):
  model = models.conv2d_model()
  assert (
    clipping.GradientTaps(model).grouped_convolutions
    == kernels.grouped_filter_gradients_supported()
  )
  assert not clipping.GradientTaps(model, static_shapes=True).grouped_convolutions
  monkeypatch.setattr(kernels, "grouped_filter_gradients_supported", lambda: False)
  assert not clipping.GradientTaps(model).grouped_convolutions
  with pytest.raises(ValueError, match="do not compute grouped-convolution filter gradients"):
    clipping.GradientTaps(model, grouped_convolutions=True)


def test_grouped_convolutions_are_refused_with_static_shapes():
  with pytest.raises(ValueError, match="static batch size"):
    clipping.GradientTaps(models.conv2d_model(), static_shapes=True, grouped_convolutions=True)


def _clipped_sum(taps, x, y, mask, l2_norm_clip, dynamic_batch):
  def clipped_sum(x, y, mask):
    return clipping.per_example_clipped_sum(taps.backward(x, y, LOSS, mask), mask, l2_norm_clip)

  if dynamic_batch:  # as Keras traces a DP step on Poisson batches
    spec = lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))
    clipped_sum = tf.function(
      clipped_sum, input_signature=[spec(x), spec(y), tf.TensorSpec([None])]
    )
  return clipped_sum(tf.constant(x), tf.constant(y), tf.constant(mask))


@pytest.mark.parametrize("grouped", CONV_PATHS)
@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_both_convolution_paths_match_the_loop(kind, grouped, dynamic_batch):
  model = models.MODELS[kind]()
  x, y = models.batch_for(kind, BATCH, seed=5)
  mask = np.ones(BATCH, np.float32)
  mask[3] = 0.0
  taps = clipping.GradientTaps(model, grouped_convolutions=grouped)
  assert taps.grouped_convolutions == grouped
  actual = _clipped_sum(taps, x, y, mask, 0.05, dynamic_batch)
  expected = clipping.reference_clipped_sum(model, LOSS, x, y, 0.05, mask=mask)
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=1e-5, atol=1e-6)
