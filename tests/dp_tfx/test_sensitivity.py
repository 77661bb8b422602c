"""Invariant 3 on neighbouring datasets: how far one example moves the clipped gradient sum.

For every kind of tap the clipping code has (Dense, Conv1D, Conv2D, Embedding, EinsumDense,
LayerNormalization, and the vectorised fallback), with only that kind's layers trainable so that
its tap alone computes the norms, datasets D and D' differ by one example: added or removed (as a
row, or through the padding mask) or replaced. The clipped sums are computed by the library's own
path (GradientTaps.backward, then per_example_clipped_sum, or microbatch_sums and
clipped_microbatch_sum with the microbatch assignment held fixed) and compared with what the
sensitivity the accountant assumes allows:

* per-example clipping: add/remove moves the sum by at most C, replace by at most 2C;
* microbatches: add, remove or replace changes one microbatch's clipped mean, so at most 2C.

The changed examples get the label their model finds least likely, so their gradients are far
larger than C: the bound is then reached (an added or removed example moves the sum by exactly C),
which a sum that skipped or under-did clipping would overshoot and one that over-clipped would
miss. Each difference is also compared, as a vector, with the same quantity computed from
per-example gradients of single-example tapes (an independent path).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from dp_tfx import clipping
from tests.dp_tfx import models

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
BATCH = 8
POSITION = 3  # where the changed example sits in the larger dataset (rows after it shift)
RELATIVE = 1e-4  # float32 sums of a few gradients

# name: (model, data kind, the only trainable layer types (None: all), GradientTaps(static_shapes))
CASES = {
  "Dense": (models.dense_model, "dense", (keras.layers.Dense,), False),
  "Conv1D": (models.conv1d_model, "conv1d", (keras.layers.Conv1D,), False),
  "Conv1D-static-shapes": (models.conv1d_model, "conv1d", (keras.layers.Conv1D,), True),
  "Conv2D": (models.conv2d_model, "conv2d", (keras.layers.Conv2D,), False),
  "Conv2D-static-shapes": (models.conv2d_model, "conv2d", (keras.layers.Conv2D,), True),
  "Embedding": (models.embedding_model, "embedding", (keras.layers.Embedding,), False),
  "Embedding-static-shapes": (models.embedding_model, "embedding", (keras.layers.Embedding,), True),
  "EinsumDense": (models.attention_model, "attention", (keras.layers.EinsumDense,), False),
  "LayerNormalization": (
    models.attention_model,
    "attention",
    (keras.layers.LayerNormalization,),
    False,
  ),
  "fallback": (models.fallback_model, "fallback", (keras.layers.GroupNormalization,), False),
  "every-layer": (models.attention_model, "attention", None, False),
}


def _keep_trainable_only(model, layer_types):
  """Freezes every layer that neither is of `layer_types` nor contains one."""
  for layer in model._flatten_layers(include_self=False, recursive=True):
    inside = list(layer._flatten_layers(include_self=True, recursive=True))
    if not any(isinstance(sub, layer_types) for sub in inside):
      layer.trainable = False


def _flat(tensors) -> np.ndarray:
  return np.concatenate([np.asarray(tf.convert_to_tensor(t), np.float64).ravel() for t in tensors])


class _Case:
  """A model whose trainable layers use one kind of tap, 10 examples and their own gradients.

  Rows 0..7 are the dataset without the changed example; row 8 is the example added, removed
  or replaced (`z`); row 9 replaces it (`z_prime`). Both changed rows get the label their model
  finds least likely (a large loss), and C is a tenth of the smaller of their gradient norms.
  """

  def __init__(self, name):
    build, kind, layer_types, static_shapes = CASES[name]
    keras.utils.set_random_seed(7)
    self.model = build()
    if layer_types is not None:
      _keep_trainable_only(self.model, layer_types)
    self.taps = clipping.GradientTaps(self.model, static_shapes=static_shapes)
    self.x, self.y = models.batch_for(kind, BATCH + 2, seed=5)
    logits = np.asarray(self.model(self.x[BATCH:], training=True))
    self.y[BATCH:] = np.argmin(logits, axis=-1)
    # The independent path: one tape per example, over the model's trainable variables.
    self.gradients = np.stack([self._tape_gradient(b) for b in range(BATCH + 2)])
    norms = np.linalg.norm(self.gradients, axis=1)
    self.clip = 0.1 * float(min(norms[BATCH], norms[BATCH + 1]))
    assert self.clip > 0
    self.layer_types, self.static_shapes = layer_types, static_shapes

  def _tape_gradient(self, row):
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      loss = LOSS(self.y[row : row + 1], self.model(self.x[row : row + 1], training=True))[0]
    gradients = tape.gradient(loss, variables)
    assert len(gradients) == len(variables) and all(g is not None for g in gradients)
    return _flat(gradients)

  def rows(self, changed=BATCH):
    """The base rows with row `changed` inserted at POSITION."""
    return list(range(POSITION)) + [changed] + list(range(POSITION, BATCH))

  def clipped(self, gradient):
    """clip(g, C), independently."""
    return gradient * min(1.0, self.clip / np.linalg.norm(gradient))

  def _backward(self, rows, mask):
    mask = tf.constant(mask, tf.float32)
    grads = self.taps.backward(tf.constant(self.x[rows]), tf.constant(self.y[rows]), LOSS, mask)
    return grads, mask

  def clipped_sum(self, rows, mask=None):
    """The library's per-example clipped sum over `rows`, flattened."""
    mask = np.ones(len(rows)) if mask is None else mask
    grads, mask = self._backward(rows, mask)
    total = clipping.per_example_clipped_sum(grads, mask, self.clip)
    assert len(total) == len(self.model.trainable_variables)
    return _flat(total)

  def microbatch_sum(self, rows, ids, num_microbatches, mask=None):
    """The library's sum of clipped microbatch means over `rows`, flattened."""
    mask = np.ones(len(rows)) if mask is None else mask
    grads, mask = self._backward(rows, mask)
    sums, counts, _ = clipping.microbatch_sums(
      grads, mask, tf.constant(ids, tf.int32), num_microbatches
    )
    total = clipping.clipped_microbatch_sum(sums, counts, self.clip)
    assert len(total) == len(self.model.trainable_variables)
    return _flat(total)


@functools.lru_cache(maxsize=None)
def _case(name) -> _Case:
  return _Case(name)


def _assert_matches(difference, expected, clip):
  np.testing.assert_allclose(difference, expected, rtol=0, atol=RELATIVE * clip)
  assert np.linalg.norm(difference - expected) <= 10 * RELATIVE * clip


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_case_exercises_the_tap_it_names(name):
  case = _case(name)
  taps, variables = case.taps, case.model.trainable_variables
  assert variables
  if name == "fallback":
    assert not taps.taps and len(taps.fallback_variables) == len(variables)
  else:
    assert not taps.fallback_variables
    if case.layer_types is not None:
      assert {type(tap.layer) for tap in taps.taps} == set(case.layer_types)
  # The tap's per-example norms are those of the single-example tapes (C is a tenth of the
  # changed examples' norms, so the changed examples are clipped hard).
  rows = list(range(BATCH + 2))
  grads, _ = case._backward(rows, np.ones(len(rows)))
  np.testing.assert_allclose(
    np.sqrt(np.asarray(grads.squared_norms(), np.float64)),
    np.linalg.norm(case.gradients, axis=1),
    rtol=1e-5,
  )


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("how", ["row", "mask"])
def test_adding_or_removing_one_example_moves_the_clipped_sum_by_c(name, how):
  case = _case(name)
  with_z = case.rows()
  if how == "row":  # D' has one row fewer; the rows after it shift up by one
    difference = case.clipped_sum(with_z) - case.clipped_sum(list(range(BATCH)))
  else:  # D' keeps the row, masked out as a padded slot
    mask = np.ones(len(with_z))
    mask[POSITION] = 0.0
    difference = case.clipped_sum(with_z) - case.clipped_sum(with_z, mask)
  norm = np.linalg.norm(difference)
  assert norm <= case.clip * (1 + RELATIVE)  # sensitivity C
  assert norm == pytest.approx(case.clip, rel=RELATIVE)  # and reached: z was clipped
  _assert_matches(difference, case.clipped(case.gradients[BATCH]), case.clip)


@pytest.mark.parametrize("name", sorted(CASES))
def test_replacing_one_example_moves_the_clipped_sum_by_at_most_2c(name):
  case = _case(name)
  difference = case.clipped_sum(case.rows()) - case.clipped_sum(case.rows(BATCH + 1))
  assert np.linalg.norm(difference) <= 2 * case.clip * (1 + RELATIVE)
  _assert_matches(
    difference,
    case.clipped(case.gradients[BATCH]) - case.clipped(case.gradients[BATCH + 1]),
    case.clip,
  )


NUM_MICROBATCHES = 5  # microbatch 4 stays empty
BASE_IDS = [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("microbatch", [3, 0], ids=["alone", "shared"])
@pytest.mark.parametrize("how", ["row", "mask", "replace"])
def test_with_microbatches_one_example_moves_the_sum_by_at_most_2c(name, microbatch, how):
  """The assignment is held fixed: every base row keeps its microbatch, z goes to `microbatch`
  (alone in it, or sharing it with rows 0, 3 and 6)."""
  case = _case(name)
  with_z = case.rows()
  ids = BASE_IDS[:POSITION] + [microbatch] + BASE_IDS[POSITION:]
  before = case.microbatch_sum(with_z, ids, NUM_MICROBATCHES)
  if how == "row":
    after = case.microbatch_sum(list(range(BATCH)), BASE_IDS, NUM_MICROBATCHES)
  elif how == "mask":
    mask = np.ones(len(with_z))
    mask[POSITION] = 0.0
    after = case.microbatch_sum(with_z, ids, NUM_MICROBATCHES, mask)
  else:
    after = case.microbatch_sum(case.rows(BATCH + 1), ids, NUM_MICROBATCHES)
  difference = before - after
  assert np.linalg.norm(difference) <= 2 * case.clip * (1 + RELATIVE)

  # Only z's microbatch changes: the difference is that microbatch's clipped mean before and
  # after, from the independent per-example gradients.
  others = [b for b, k in zip(range(BATCH), BASE_IDS, strict=True) if k == microbatch]
  clipped_mean = lambda rows: (
    case.clipped(case.gradients[rows].mean(axis=0)) if rows else np.zeros(case.gradients.shape[1])
  )
  replacement = [BATCH + 1] if how == "replace" else []
  expected = clipped_mean(others + [BATCH]) - clipped_mean(others + replacement)
  _assert_matches(difference, expected, case.clip)
  if microbatch == 3 and how != "replace":  # z alone: its microbatch's clipped mean appears/goes
    assert np.linalg.norm(difference) == pytest.approx(case.clip, rel=RELATIVE)
