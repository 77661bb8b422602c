"""Small models of every layer kind the clipping code handles, shared by the tests."""

import keras
import numpy as np

VOCAB = 20


def dense_model():
  return keras.Sequential(
    [keras.Input((6,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
  )


def conv2d_model():
  """Small patches (grouped-convolution per-example gradients, strided and dilated) and a patch
  of 6 * 6 * 4 = 144 values (unfolded)."""
  return keras.Sequential(
    [
      keras.Input((9, 9, 2)),
      keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
      keras.layers.Conv2D(3, 6, padding="same", activation="relu"),
      keras.layers.Conv2D(3, 2, padding="valid", dilation_rate=2),
      keras.layers.Flatten(),
      keras.layers.Dense(3),
    ]
  )


def conv1d_model():
  """A small patch and one of 33 * 4 = 132 values."""
  return keras.Sequential(
    [
      keras.Input((7, 3)),
      keras.layers.Conv1D(4, 3, strides=2, padding="same"),
      keras.layers.Conv1D(2, 33, padding="same"),
      keras.layers.GlobalAveragePooling1D(),
      keras.layers.Dense(3),
    ]
  )


def embedding_model():
  return keras.Sequential(
    [
      keras.Input((5,), dtype="int32"),
      keras.layers.Embedding(VOCAB, 4),
      keras.layers.Dense(4, activation="relu"),
      keras.layers.GlobalAveragePooling1D(),
      keras.layers.Dense(3),
    ]
  )


def fallback_model():
  """GroupNormalization has no fast tap: its variables take the vectorised fallback."""
  return keras.Sequential(
    [
      keras.Input((6,)),
      keras.layers.Dense(4),
      keras.layers.Reshape((2, 2)),
      keras.layers.GroupNormalization(2),
      keras.layers.Flatten(),
      keras.layers.Dense(3),
    ]
  )


def attention_model():
  """MultiHeadAttention (EinsumDense projections) and LayerNormalization, as in a transformer."""
  inputs = keras.Input((5,), dtype="int32")
  x = keras.layers.Embedding(VOCAB, 8)(inputs)
  x = keras.layers.LayerNormalization()(x + keras.layers.MultiHeadAttention(2, 4)(x, x))
  x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 6), bias_axes="d")(x)
  return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))


def recurrent_model():
  """LSTM (both directions), GRU and SimpleRNN over masked sequences (id 0 is padding)."""
  return keras.Sequential(
    [
      keras.Input((5,), dtype="int32"),
      keras.layers.Embedding(VOCAB, 4, mask_zero=True),
      keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True)),
      keras.layers.GRU(3, return_sequences=True),
      keras.layers.SimpleRNN(2),
      keras.layers.Dense(3),
    ]
  )


MODELS = {
  "dense": dense_model,
  "conv2d": conv2d_model,
  "conv1d": conv1d_model,
  "embedding": embedding_model,
  "fallback": fallback_model,
  "attention": attention_model,
  "recurrent": recurrent_model,
}


def batch_for(kind, size, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"dense": (6,), "conv2d": (9, 9, 2), "conv1d": (7, 3), "fallback": (6,)}
  if kind in ("embedding", "attention", "recurrent"):
    x = rng.integers(0, VOCAB, size=(size, 5)).astype("int32")
  else:
    x = rng.normal(size=(size, *shapes[kind])).astype("float32")
  y = rng.integers(0, 3, size=size).astype("int32")
  return x, y
