"""The DPTrainer module of the language-model pipeline: a small causal character transformer, or
the recurrent model of the TensorFlow Privacy announcement (hyperparameter architecture="lstm").

Examples hold "chars": SEQUENCE_LENGTH + 1 character ids, one sequence of Shakespeare (or a canary
followed by PAD ids). The model reads the first SEQUENCE_LENGTH ids and predicts, at every
position, the next one; PAD positions carry no loss, so a canary's loss is that of its own
characters. One sequence is the privacy unit: DP-SGD bounds what any one sequence (and so any one
inserted canary copy) can do to the model.

Only layers whose per-example gradients dp_tfx.clipping computes from one backward pass are used
(Embedding, Dense, the EinsumDense inside MultiHeadAttention, LayerNormalization, LSTM), which is
why positions come in as a second input built by `decode` (a plain Embedding) rather than as a
position layer with its own weights; the LSTM ignores them.

Hyperparameters (custom_config): architecture ("transformer", default, or "lstm"),
learning_rate (default 0.01, Adam), model_dim (32; the LSTM's units and embedding width, 64),
num_heads (4), num_blocks (2), jit_compile (default "auto": XLA on accelerators only). With DP
noise of a given multiplier, a model with fewer weights gets less noise in all: at model_dim 64
(117k weights) the transformer reached the same held-out bits per character as at 32 (34k) in
twice the time. The non-private control (`run_fn`, for a standard TFX Trainer) also needs epochs and
batch_size, see dp_tfx.components.dp_trainer.control.
"""

import math
import sys
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from dp_tfx.components.dp_trainer import control
from dp_tfx.ledger import SEQUENCE
from dp_tfx.pipelines.examples import LM_ARCHITECTURES

CHARS_KEY = "chars"
TOKENS_KEY = "tokens"
POSITIONS_KEY = "positions"
# Characters the model reads; a record holds one more (the last one is only predicted).
SEQUENCE_LENGTH = 64
PAD_ID = 0
UNKNOWN_ID = 1
# Newline and printable ASCII: every character of the plays but the em dash (64 of 4.96 million),
# which becomes UNKNOWN_ID.
VOCABULARY = "\n" + "".join(chr(code) for code in range(32, 127))
VOCABULARY_SIZE = len(VOCABULARY) + 2
_ID_OF_CODE = np.full(128, UNKNOWN_ID, dtype=np.int64)
_ID_OF_CODE[[ord(c) for c in VOCABULARY]] = np.arange(2, VOCABULARY_SIZE)


def encode(text: str) -> np.ndarray:
  """Character ids of `text` (int64); characters outside VOCABULARY become UNKNOWN_ID."""
  codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
  return np.where(codes < 128, _ID_OF_CODE[np.minimum(codes, 127)], UNKNOWN_ID)


def padded_record(text: str) -> np.ndarray:
  """One record's ids for a text shorter than a record (a canary): its ids, then PAD ids.

  Raises:
    ValueError: if the text does not fit in SEQUENCE_LENGTH + 1 characters.
  """
  ids = encode(text)
  if len(ids) > SEQUENCE_LENGTH + 1:
    raise ValueError(f"{text!r} has {len(ids)} characters; a record holds {SEQUENCE_LENGTH + 1}")
  return np.pad(ids, (0, SEQUENCE_LENGTH + 1 - len(ids)), constant_values=PAD_ID)


def serialize(record: np.ndarray) -> bytes:
  """A serialized tf.Example of one record of SEQUENCE_LENGTH + 1 ids: the training format."""
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        CHARS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=record)),
      }
    )
  ).SerializeToString()


def canary_examples(texts: Sequence[str], context) -> list:
  """Serialized tf.Examples of canary texts, exactly as training saw an inserted canary.

  The serving signature on these, with the loss, scores a canary (or any candidate secret) the
  way training did.
  """
  del context
  return [serialize(padded_record(text)) for text in texts]


def decode_text(ids) -> str:
  """The text of character ids: PAD ids dropped, UNKNOWN_ID as U+FFFD (the inverse of `encode`
  on VOCABULARY's characters)."""
  ids = np.asarray(ids)
  return "".join("\ufffd" if i == UNKNOWN_ID else VOCABULARY[i - 2] for i in ids[ids != PAD_ID])


def example_text(parsed, context) -> list:
  """Each parsed example's sequence as text: how the audit shows the training sequences the DP
  model and the non-private control disagree on."""
  del context
  return [decode_text(ids) for ids in np.asarray(parsed[CHARS_KEY])]


def feature_spec(context):
  del context
  return {CHARS_KEY: tf.io.FixedLenFeature([SEQUENCE_LENGTH + 1], tf.int64)}


def decode(parsed, context):
  del context
  chars = tf.cast(parsed[CHARS_KEY], tf.int32)
  tokens = chars[:, :-1]
  positions = tf.broadcast_to(tf.range(SEQUENCE_LENGTH), tf.shape(tokens))
  return {TOKENS_KEY: tokens, POSITIONS_KEY: positions}, chars[:, 1:]


TRANSFORMER, LSTM = LM_ARCHITECTURES


def build_model(context):
  """Logits [B, SEQUENCE_LENGTH, VOCABULARY_SIZE] of the next character at every position."""
  hyperparameters = context.hyperparameters
  architecture = hyperparameters.get("architecture", TRANSFORMER)
  if architecture not in LM_ARCHITECTURES:
    raise ValueError(f"architecture must be one of {LM_ARCHITECTURES}; got {architecture!r}")
  tokens = keras.Input((SEQUENCE_LENGTH,), dtype="int32", name=TOKENS_KEY)
  positions = keras.Input((SEQUENCE_LENGTH,), dtype="int32", name=POSITIONS_KEY)
  if architecture == LSTM:
    logits = _lstm(tokens, hyperparameters.get("model_dim", 64))
  else:
    logits = _transformer(tokens, positions, hyperparameters)
  return keras.Model(
    {TOKENS_KEY: tokens, POSITIONS_KEY: positions}, logits, name=f"char_{architecture}"
  )


def _lstm(tokens, units: int):
  """One LSTM layer over character embeddings: the recurrent model of the TF Privacy seed."""
  x = keras.layers.Embedding(VOCABULARY_SIZE, units)(tokens)
  return keras.layers.Dense(VOCABULARY_SIZE)(keras.layers.LSTM(units, return_sequences=True)(x))


def _transformer(tokens, positions, hyperparameters):
  """Pre-norm causal transformer."""
  model_dim = hyperparameters.get("model_dim", 32)
  num_heads = hyperparameters.get("num_heads", 4)
  x = keras.layers.Embedding(VOCABULARY_SIZE, model_dim)(tokens) + keras.layers.Embedding(
    SEQUENCE_LENGTH, model_dim
  )(positions)
  for _ in range(hyperparameters.get("num_blocks", 2)):
    normalized = keras.layers.LayerNormalization()(x)
    x = x + keras.layers.MultiHeadAttention(num_heads, model_dim // num_heads)(
      normalized, normalized, use_causal_mask=True
    )
    normalized = keras.layers.LayerNormalization()(x)
    x = x + keras.layers.Dense(model_dim)(
      keras.layers.Dense(4 * model_dim, activation="gelu")(normalized)
    )
  return keras.layers.Dense(VOCABULARY_SIZE)(keras.layers.LayerNormalization()(x))


class CharacterAccuracy(keras.metrics.SparseCategoricalAccuracy):
  """Next-character accuracy over real characters: the PAD positions after a canary do not count."""

  def __init__(self, name="accuracy", **kwargs):
    super().__init__(name=name, **kwargs)

  def update_state(self, y_true, y_pred, sample_weight=None):
    weights = tf.cast(tf.not_equal(y_true, PAD_ID), self.dtype)
    if sample_weight is not None:  # DP training's [B] mask of padded batch slots
      weights *= tf.reshape(tf.cast(sample_weight, self.dtype), [-1, 1])
    return super().update_state(y_true, y_pred, sample_weight=weights)


def compile_kwargs(context):
  hyperparameters = context.hyperparameters
  return {
    "optimizer": keras.optimizers.Adam(hyperparameters.get("learning_rate", 0.01)),
    "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
    "metrics": [CharacterAccuracy()],
    "jit_compile": hyperparameters.get("jit_compile", "auto"),
  }


def privacy_unit(context):
  del context
  return SEQUENCE


def bits_per_character(labels, logits) -> float:
  """Bits per character of the real characters (PAD positions excluded): the LM's utility.

  Args:
    labels: [N, SEQUENCE_LENGTH] next-character ids, as `decode` returns them.
    logits: [N, SEQUENCE_LENGTH, VOCABULARY_SIZE], the model's (or its serving signature's)
      outputs for the same sequences.
  """
  labels = np.asarray(labels)
  nats = tf.nn.sparse_softmax_cross_entropy_with_logits(
    labels=labels, logits=tf.cast(logits, tf.float32)
  ).numpy()
  real = labels != PAD_ID
  return float(nats[real].sum() / real.sum() / math.log(2))


def held_out_metrics(labels, logits, context) -> dict:
  """What the privacy audit reports of this model's utility on held-out sequences."""
  del context
  return {"bits_per_character": bits_per_character(labels, logits)}


def run_fn(fn_args):
  """The non-private control, for a standard TFX Trainer: this module trained without DP."""
  return control.train_non_private_control(fn_args, sys.modules[__name__])
