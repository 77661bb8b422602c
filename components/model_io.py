"""Reading the examples a component trains or audits on, and exporting and evaluating its model,
the same way in every component (the DPTrainer, the non-private control, the PrivacyAuditor), so
that the DP model and its control see the same data and serve the same signature.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Dict, List, Sequence

import keras
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.types import artifact_utils
from tfx.utils import io_utils

from dp_tfx import record_digest
from dp_tfx.components import specs

TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
SERVING_EXAMPLES_KEY = "examples"
METRICS_FILE = "eval_metrics.json"


def splits(exec_properties) -> tuple:
  """(train split, eval split) of a component's exec properties (default "train", "eval")."""
  return (
    exec_properties.get(specs.TRAIN_SPLIT_KEY) or TRAIN_SPLIT,
    exec_properties.get(specs.EVAL_SPLIT_KEY) or EVAL_SPLIT,
  )


def split_file_patterns(examples: types.Artifact, split: str) -> List[str]:
  """The file pattern of one split of an Examples artifact (as FnArgs.train_files has them)."""
  return [io_utils.all_files_pattern(artifact_utils.get_split_uri([examples], split))]


def example_records(file_patterns: Sequence[str]) -> tf.data.Dataset:
  """The serialized tf.Examples in the files matching `file_patterns`, in sorted file order."""
  files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"no example files match {list(file_patterns)}")
  compression = "GZIP" if all(f.endswith(".gz") for f in files) else None
  return tf.data.TFRecordDataset(files, compression_type=compression)


def records_digest(file_patterns: Sequence[str]) -> str:
  """The dp_tfx.record_digest of the serialized tf.Examples in the files: what PoissonBatchGen
  records of the same split, so the budget root knows the data either way."""
  digest = record_digest.RecordDigest()
  for batch in example_records(file_patterns).batch(4096):
    for record in batch.numpy():
      digest.add(record)
  return digest.text()


def read_examples(file_patterns: Sequence[str], spec, decode, context):
  """All examples in the files matching `file_patterns`, parsed and decoded into in-memory arrays.

  Returns:
    (inputs, labels) as the user module's `decode` makes them, concatenated over all files.
  """
  parts = list(examples_dataset(file_patterns, spec, decode, context).as_numpy_iterator())
  inputs = tf.nest.map_structure(lambda *a: np.concatenate(a), *[p[0] for p in parts])
  return inputs, np.concatenate([p[1] for p in parts])


def examples_dataset(
  file_patterns: Sequence[str], spec, decode, context, batch_size: int = 1024
) -> tf.data.Dataset:
  """The examples in the files matching `file_patterns`, parsed and decoded in batches, read as
  they are used: evaluation holds a batch at a time, whatever the split's size.

  Not sharded across workers: on several workers each evaluates every batch (the averaged
  metrics are then every worker's own, and no worker runs out of batches while another waits
  for it in a collective step)."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return (
    example_records(file_patterns)
    .batch(batch_size)
    .map(
      lambda serialized: decode(tf.io.parse_example(serialized, spec), context),
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    .prefetch(tf.data.AUTOTUNE)
    .with_options(options)
  )


@contextlib.contextmanager
def eval_dataset_read_whole():
  """Keras remembers how many batches a validation pass over a dataset of unknown length took
  and calls the end of the next pass (the dataset read whole, as meant) running out of data."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    yield


def evaluate_metrics(model: keras.Model, dataset: tf.data.Dataset) -> Dict[str, float]:
  """The compiled model's metrics on a dataset of (inputs, labels) batches."""
  with eval_dataset_read_whole():
    return {
      name: float(value)
      for name, value in model.evaluate(dataset, return_dict=True, verbose=0).items()
    }


def record_eval_metrics(
  model: keras.Model, dataset: tf.data.Dataset, model_run_dir: str
) -> Dict[str, float]:
  """evaluate_metrics, also written as METRICS_FILE into model_run_dir."""
  metrics = evaluate_metrics(model, dataset)
  io_utils.write_string_file(os.path.join(model_run_dir, METRICS_FILE), json.dumps(metrics))
  return metrics


def export_serving_model(model: keras.Model, spec, decode, context, serving_dir: str) -> None:
  """SavedModel whose serving_default parses tf.Examples (for Pusher and the TFX Evaluator)."""
  archive = keras.export.ExportArchive()
  archive.track(model)

  def serve_examples(serialized):
    inputs, _ = decode(tf.io.parse_example(serialized, spec), context)
    return {"outputs": model(inputs, training=False)}

  archive.add_endpoint(
    "serving_default",
    serve_examples,
    input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_EXAMPLES_KEY)],
  )
  archive.write_out(serving_dir, verbose=False)
