"""The DPTrainer's user module for benchmarks.scale's synthetic examples (16 float features and a
binary label): the model benchmarks.scale trains, for the whole pipeline (scale_pipeline)."""

import keras
import tensorflow as tf

FEATURES = 16


def feature_spec(context):
  return {
    "x": tf.io.FixedLenFeature([FEATURES], tf.float32),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }


def decode(parsed, context):
  return parsed["x"], parsed["label"]


def build_model(context):
  return keras.Sequential(
    [keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)]
  )


def compile_kwargs(context):
  return {
    "optimizer": keras.optimizers.SGD(0.1),
    "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "metrics": ["accuracy"],
  }
