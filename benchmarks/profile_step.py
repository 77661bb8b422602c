"""Where a DP step's time goes: its stages timed against the non-private step, on one batch.

For each model and batch size, one JSON line with the median time (ms) of, on one batch of
real-size inputs (all examples real, no padding), each as its own tf.function:

  non_private          forward + backward to every weight (what a plain Keras step computes)
  plain_step           Keras's own training step: non_private + the optimizer update, metrics
  dp_backward          forward with the clipping taps + backward to the taps' pre-activations
  dp_prepare           ... + unfolding inputs and, where cheaper than ghost norms, building
                       per-example kernel gradients
  dp_norms             ... + per-example squared gradient norms
  dp_clipped_sum       ... + the clipped sum (the whole per-example clipping)
  dp_noise             ... + the Gaussian noise drawn in the step (TensorFlow's sampler, as for
                       several replicas and for models too large for pipeline noise)
  dp_step              the DP model's whole training step (+ the update, metrics), its noise
                       drawn in the step
  host_noise           one step's noise drawn in a tf.data map, as one replica's input pipeline
                       draws it while the previous step trains (not included in dp_step)

and the differences between consecutive stages, so the overhead splits into backward, prepare,
norms, sum, noise and update. Poisson sampling and Keras's loop come on top in real training
(see step_overhead for whole steps as `fit` runs them).

    .venv/bin/python -m benchmarks.profile_step --models cnn text transformer --batch-sizes 64 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

import dp_tfx
from benchmarks.step_overhead import MODELS, _compile, _data
from dp_tfx import clipping, keys, noise

_STAGES = ("dp_backward", "dp_prepare", "dp_norms", "dp_clipped_sum", "dp_noise", "dp_step")
_CLIP = 1.0
_NOISE_MULTIPLIER = 1.0


def _timed(fn, args, repeats: int, iterations: int) -> float:
  """Median over `repeats` of the mean time of `iterations` calls, results fetched (ms)."""
  result = fn(*args)
  tf.nest.map_structure(lambda t: t.numpy(), result)  # trace and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iterations):
      result = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    times.append((time.perf_counter() - start) / iterations * 1000)
  return statistics.median(times)


def _stage_functions(model, loss_fn):
  taps = clipping.GradientTaps(model)

  @tf.function
  def non_private(x, y):
    with tf.GradientTape() as tape:
      total = tf.reduce_sum(loss_fn(y, model(x, training=True)))
    return [tf.convert_to_tensor(g) for g in tape.gradient(total, model.trainable_variables)]

  def backward(x, y):
    mask = tf.ones([tf.shape(y)[0]])
    return taps.backward(x, y, loss_fn, mask), mask

  @tf.function
  def dp_backward(x, y):
    # Only the pre-activation gradients, without the taps' preparation (as in GradientTaps).
    with tf.GradientTape() as tape:
      with taps.recording(tape):
        predictions = model(x, training=True)
      total = tf.reduce_sum(loss_fn(y, predictions))
    return tape.gradient(total, [z for tap in taps.taps for z in tap.outputs()])

  @tf.function
  def dp_prepare(x, y):
    grads, _ = backward(x, y)
    return grads.prepared_tensors()

  @tf.function
  def dp_norms(x, y):
    grads, _ = backward(x, y)
    return grads.squared_norms()

  @tf.function
  def dp_clipped_sum(x, y):
    grads, mask = backward(x, y)
    return clipping.per_example_clipped_sum(grads, mask, _CLIP)

  key = keys.run_key(seed=0)

  @tf.function
  def dp_noise(x, y):
    return noise.add_gaussian_noise(
      dp_clipped_sum.python_function(x, y), _NOISE_MULTIPLIER * _CLIP, key, tf.constant(0, tf.int64)
    )

  return {
    "non_private": non_private,
    "dp_backward": dp_backward,
    "dp_prepare": dp_prepare,
    "dp_norms": dp_norms,
    "dp_clipped_sum": dp_clipped_sum,
    "dp_noise": dp_noise,
  }


def _train_steps(model_name, x, y):
  """Keras's plain training step and the DP model's, each a tf.function on (x, y)."""
  batch_size = int(x.shape[0])
  plain = MODELS[model_name]()
  _compile(plain, jit_compile=False)
  plain.fit(x, y, batch_size=batch_size, verbose=0)  # builds the optimizer and metrics
  dp_model = dp_tfx.make_private(
    MODELS[model_name](),
    dp_tfx.DPConfig(
      l2_norm_clip=_CLIP, noise_multiplier=_NOISE_MULTIPLIER, batch_size=batch_size, steps=10
    ),
  )
  _compile(dp_model, jit_compile=False)
  # Four copies of the batch: a sampling rate of 1/4; one epoch of training builds everything.
  dp_model.fit(tf.concat([x] * 4, 0), tf.concat([y] * 4, 0), epochs=1, verbose=0)
  mask = tf.ones([batch_size])
  plain_step = tf.function(lambda x, y: plain.train_step((x, y)))
  dp_step = tf.function(lambda x, y: dp_model.train_step((x, y, mask)))
  return plain_step, dp_step


def _host_noise_ms(model, repeats: int, iterations: int) -> float:
  """One step's noise drawn in a tf.data map, as the DP input pipeline draws it."""
  host_noise = noise.host_gaussian_noise(
    model.trainable_variables, _NOISE_MULTIPLIER * _CLIP, keys.run_key(seed=0)
  )
  elements = iter(tf.data.Dataset.range(1 << 40).map(lambda step: tuple(host_noise(step))))
  return _timed(lambda: next(elements), (), repeats, iterations)


def profile(model_name: str, batch_size: int, repeats: int, iterations: int) -> dict:
  keras.utils.set_random_seed(0)
  model = MODELS[model_name]()
  x, y = _data(model_name, batch_size, np.random.default_rng(0))
  x, y = tf.constant(x), tf.constant(y)
  model(x[:1])
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
  functions = _stage_functions(model, loss)
  functions["plain_step"], functions["dp_step"] = _train_steps(model_name, x, y)
  stages = {name: _timed(fn, (x, y), repeats, iterations) for name, fn in functions.items()}
  stages["host_noise"] = _host_noise_ms(model, repeats, iterations)
  previous = stages["non_private"]
  overhead = {}
  for name in _STAGES:
    overhead[name.replace("dp_", "") + "_ms"] = round(stages[name] - previous, 3)
    previous = stages[name]
  # dp_backward's difference is against the non-private pass (it skips the weight gradients);
  # step_ms is what the DP step adds to the noisy clipped sum (update, metrics, its loop).
  return {
    "model": model_name,
    "batch_size": batch_size,
    "stages_ms": {k: round(v, 3) for k, v in stages.items()},
    "added_by_stage_ms": overhead,
    "clipping_over_non_private": round(stages["dp_clipped_sum"] / stages["non_private"], 3),
    "dp_step_over_plain_step": round(stages["dp_step"] / stages["plain_step"], 3),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn"])
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--iterations", type=int, default=20)
  args = parser.parse_args(argv)
  for model_name in args.models:
    for batch_size in args.batch_sizes:
      print(json.dumps(profile(model_name, batch_size, args.repeats, args.iterations)), flush=True)


if __name__ == "__main__":
  main()
