"""A user module for audit tests: an MLP that memorises random labels when nothing stops it.

Random labels carry no signal, so whatever the model learns about a training example is
memorisation, the thing a membership-inference attack detects.
"""

import keras
import tensorflow as tf

FEATURES_KEY = "x"
LABEL_KEY = "label"
DIMENSION = 32
CLASSES = 10


def feature_spec(context):
  del context
  return {
    FEATURES_KEY: tf.io.FixedLenFeature([DIMENSION], tf.float32),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }


def decode(parsed, context):
  del context
  return parsed[FEATURES_KEY], tf.cast(parsed[LABEL_KEY], tf.int32)


def build_model(context):
  del context
  return keras.Sequential(
    [
      keras.Input((DIMENSION,)),
      keras.layers.Dense(256, activation="relu"),
      keras.layers.Dense(CLASSES),
    ]
  )


def compile_kwargs(context):
  del context
  return {
    "optimizer": keras.optimizers.Adam(0.01),
    "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "jit_compile": False,
  }
