"""The DPTrainer module of the MNIST pipeline (referenced by path, like a TFX Trainer module).

Examples hold "image" (784 floats in [0, 1]) and "label" (int64). Hyperparameters (custom_config):
learning_rate and momentum (default: examples.MNIST's), jit_compile (default "auto": XLA on
accelerators only; on CPU it makes these steps about 3x slower). `run_fn` trains the non-private
control in a standard TFX Trainer (custom_config also needs epochs and batch_size).
"""

import sys

import keras
import numpy as np
import tensorflow as tf

from dp_tfx import models
from dp_tfx.components.dp_trainer import control
from dp_tfx.pipelines.examples import MNIST

IMAGE_KEY = "image"
LABEL_KEY = "label"
IMAGE_SHAPE = (28, 28, 1)


def feature_spec(context):
  del context
  return {
    IMAGE_KEY: tf.io.FixedLenFeature([784], tf.float32),
    # A default lets the serving signature take examples without labels.
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }


def decode(parsed, context):
  del context
  return tf.reshape(parsed[IMAGE_KEY], (-1, *IMAGE_SHAPE)), tf.cast(parsed[LABEL_KEY], tf.int32)


def build_model(context):
  del context
  return models.tutorial_cnn()


def compile_kwargs(context):
  # The example's hyperparameters (examples.MNIST), unless custom_config says otherwise.
  hyperparameters = {**MNIST.hyperparameters, **context.hyperparameters}
  return {
    "optimizer": keras.optimizers.SGD(
      learning_rate=hyperparameters["learning_rate"], momentum=hyperparameters["momentum"]
    ),
    "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "metrics": ["accuracy"],
    "jit_compile": hyperparameters.get("jit_compile", "auto"),
  }


def held_out_metrics(labels, logits, context):
  """Held-out accuracy, which the PrivacyAuditor reports beside the DP model's privacy."""
  del context
  return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def run_fn(fn_args):
  """The non-private control, for a standard TFX Trainer: this module trained without DP."""
  return control.train_non_private_control(fn_args, sys.modules[__name__])
