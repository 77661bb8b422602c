"""Training data of growing size: Poisson batch generation on Beam, and the trainer's memory.

For each dataset size N it writes a synthetic training split itself (tf.Examples of 16 float
features and a binary label, GZIP TFRecords, as an ExampleGen would), then prints one JSON line:

  examples                 N
  batchgen_examples_per_s  PoissonBatchGen's executor on Beam's DirectRunner with 2 worker
                           processes: N / its wall time (both passes: the count and the draw)
  batchgen_seconds, steps  that time, and the steps it drew (fixed: the trainer runs them all)
  streaming                the DPTrainer's way with batches: DPModel.fit(PoissonBatchStream), in a
                           fresh process: peak resident memory (MB) while training, what the
                           fit added to the process (TensorFlow and Keras already loaded), steps/s
  in_memory                the same facts from the split read into memory (sizes up to
                           --in-memory-limit): the in-memory path's peak memory and steps/s

The peak memory of each fit is measured in its own process, from just before the data is opened
(TensorFlow's import is left out), so the streaming figure shows what grows with N and what does
not. Steps/s count the steps after the first (tracing).

    .venv/bin/python -m benchmarks.scale --quick          # 100k and 1M examples, < 5 min
    .venv/bin/python -m benchmarks.scale --sizes 100000 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FEATURES = 16
SPEC = {
  "x": tf.io.FixedLenFeature([FEATURES], tf.float32),
  "label": tf.io.FixedLenFeature([], tf.int64),
}


def _config(steps: int):
  import dp_tfx

  return dp_tfx.DPConfig(l2_norm_clip=1.0, noise_multiplier=1.0, batch_size=256, steps=steps)


def write_examples(path: str, size: int, seed: int = 0) -> None:
  """`size` tf.Examples: x ~ N(0, 1)^16, label = [x_0 + noise > 0]."""
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for start in range(0, size, 10_000):
      x = rng.normal(size=(min(10_000, size - start), FEATURES)).astype(np.float32)
      labels = (x[:, 0] + rng.normal(scale=0.5, size=len(x)) > 0).astype(np.int64)
      for features, label in zip(x, labels):
        writer.write(
          tf.train.Example(
            features=tf.train.Features(
              feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
              }
            )
          ).SerializeToString()
        )


def generate_batches(examples_dir: str, batches_dir: str, steps: int) -> float:
  """Runs PoissonBatchGen's executor (DirectRunner, 2 worker processes); its seconds."""
  from dp_tfx.components import artifacts, specs, testing
  from dp_tfx.components.poisson_batch_gen import executor

  examples = testing.examples_artifact(
    examples_dir + "_artifact", {"train": os.path.join(examples_dir, "train.tfrecord.gz")}
  )
  output = artifacts.PoissonBatches()
  output.uri = batches_dir
  os.makedirs(batches_dir)
  context = executor.Executor.Context(
    beam_pipeline_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
  )
  started = time.perf_counter()
  executor.Executor(context).Do(
    {specs.EXAMPLES_KEY: [examples]},
    {specs.POISSON_BATCHES_KEY: [output]},
    {specs.DP_CONFIG_KEY: _config(steps).to_json()},
  )
  return time.perf_counter() - started


def _decode(serialized):
  parsed = tf.io.parse_example(serialized, SPEC)
  return parsed["x"], parsed["label"]


class _StepRate:
  """Steps per second after the first step (which traces the step function)."""

  def __init__(self):
    import keras

    class Callback(keras.callbacks.Callback):
      def on_train_batch_end(inner, batch, logs=None):
        self.ends.append(time.perf_counter())

    self.ends = []
    self.callback = Callback()

  @property
  def steps_per_s(self) -> float:
    return (len(self.ends) - 1) / (self.ends[-1] - self.ends[0])


def train(mode: str, examples_dir: str, batches_dir: str, steps: int) -> dict:
  """One fit of all `steps` (in this process): peak memory from here on, and steps/s."""
  import keras

  import dp_tfx
  from benchmarks.step_overhead import _status_kib
  from dp_tfx import poisson_batches
  from dp_tfx.components.model_io import read_examples

  with open("/proc/self/clear_refs", "w") as clear_refs:  # the peak from here on (Linux)
    clear_refs.write("5")
  baseline_kib = _status_kib("VmRSS")
  if mode == "streaming":
    data = (poisson_batches.PoissonBatchStream(batches_dir, _decode),)
  else:
    pattern = os.path.join(examples_dir, "*.gz")
    data = read_examples([pattern], SPEC, lambda parsed, _: (parsed["x"], parsed["label"]), None)
  model = keras.Sequential(
    [keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)]
  )
  # A ledger that outlives the model, as streaming needs (samples drawn ahead are used once).
  ledger_path = os.path.join(batches_dir, f"ledger-{mode}.json")
  dp_model = dp_tfx.make_private(model, _config(steps), ledger_path=ledger_path)
  dp_model.compile(
    optimizer=keras.optimizers.SGD(0.1),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  rate = _StepRate()
  dp_model.fit(*data, verbose=0, callbacks=[rate.callback])
  peak_kib = _status_kib("VmHWM")
  return {
    "peak_rss_mb": round(peak_kib / 1024),
    "added_rss_mb": round((peak_kib - baseline_kib) / 1024),
    "steps_per_s": round(rate.steps_per_s, 1),
  }


def _train_in_subprocess(mode, examples_dir, batches_dir, steps) -> dict:
  command = [
    sys.executable,
    "-m",
    "benchmarks.scale",
    "--_train",
    mode,
    "--_examples",
    examples_dir,
    "--_batches",
    batches_dir,
    "--steps",
    str(steps),
  ]
  output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000, 10_000_000])
  parser.add_argument("--steps", type=int, default=200, help="noisy steps drawn and trained")
  parser.add_argument(
    "--in-memory-limit",
    type=int,
    default=1_000_000,
    help="also train in memory on datasets up to this size",
  )
  parser.add_argument("--quick", action="store_true", help="100k and 1M examples")
  parser.add_argument("--_train", choices=("streaming", "in_memory"), help=argparse.SUPPRESS)
  parser.add_argument("--_examples", help=argparse.SUPPRESS)
  parser.add_argument("--_batches", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._train:
    print(json.dumps(train(args._train, args._examples, args._batches, args.steps)))
    return
  if args.quick:
    args.sizes = [100_000, 1_000_000]
  for size in args.sizes:
    with tempfile.TemporaryDirectory(prefix="dp_tfx_scale_") as directory:
      examples_dir = os.path.join(directory, "examples")
      os.makedirs(examples_dir)
      write_examples(os.path.join(examples_dir, "train.tfrecord.gz"), size)
      batches_dir = os.path.join(directory, "batches")
      seconds = generate_batches(examples_dir, batches_dir, args.steps)
      result = {
        "examples": size,
        "steps": args.steps,
        "batchgen_examples_per_s": round(size / seconds),
        "batchgen_seconds": round(seconds, 1),
        "streaming": _train_in_subprocess("streaming", examples_dir, batches_dir, args.steps),
      }
      if size <= args.in_memory_limit:
        result["in_memory"] = _train_in_subprocess(
          "in_memory", examples_dir, batches_dir, args.steps
        )
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
