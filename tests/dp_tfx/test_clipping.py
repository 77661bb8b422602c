"""Clipped gradient sums against a plain loop over single examples (reference_clipped_sum)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dp_tfx import clipping
from dp_tfx import models as models_lib
from tests.dp_tfx import models

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
BATCH = 12


def _assert_close(actual, expected):
  for a, e in zip(actual, expected, strict=True):
    # float32 sums: entries far below the tensor's largest one are only as exact as that one
    # (the fallback model's GroupNormalization gradients cancel to ~1e-2 next to ~1e1).
    np.testing.assert_allclose(
      np.asarray(a, np.float64), e, rtol=1e-5, atol=1e-6 + 1e-6 * np.max(np.abs(e))
    )


@pytest.mark.parametrize("kind", sorted(models.MODELS))
@pytest.mark.parametrize("l2_norm_clip", [0.05, 100.0])  # clipping active / inactive
def test_per_example_clipped_sum_matches_loop(kind, l2_norm_clip):
  model = models.MODELS[kind]()
  x, y = models.batch_for(kind, BATCH)
  mask = np.ones(BATCH, np.float32)
  mask[[2, 7, 11]] = 0.0  # padded slots must contribute exactly nothing
  taps = clipping.GradientTaps(model)
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.constant(mask))
  actual = clipping.per_example_clipped_sum(grads, tf.constant(mask), l2_norm_clip)
  expected = clipping.reference_clipped_sum(model, LOSS, x, y, l2_norm_clip, mask=mask)
  _assert_close(actual, expected)


def _dynamic_batch_function(fn, x, y):
  """fn traced with an unknown batch size, as Keras traces a DP step on Poisson batches."""
  spec = lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))
  return tf.function(fn, input_signature=[spec(x), spec(y), tf.TensorSpec([None])])


@pytest.mark.parametrize("kind", sorted(models.MODELS))
def test_clipped_sum_with_an_unknown_batch_size_matches_loop(kind):
  model = models.MODELS[kind]()
  x, y = models.batch_for(kind, BATCH, seed=2)
  mask = np.ones(BATCH, np.float32)
  mask[4] = 0.0
  taps = clipping.GradientTaps(model)
  clipped_sum = _dynamic_batch_function(
    lambda x, y, mask: clipping.per_example_clipped_sum(
      taps.backward(x, y, LOSS, mask), mask, 0.05
    ),
    x,
    y,
  )
  expected = clipping.reference_clipped_sum(model, LOSS, x, y, 0.05, mask=mask)
  _assert_close(clipped_sum(x, y, mask), expected)


# Ids repeat within examples (runs of up to 6) and across them; an id (3) is used by one
# example only, and the largest (7) by none.
_REPEATED_IDS = np.array(
  [[1, 1, 1, 1, 1, 1], [0, 6, 0, 6, 0, 6], [5, 4, 3, 2, 1, 0], [2, 2, 5, 2, 5, 2]], np.int32
)


def _repeated_ids_model():
  return keras.Sequential(
    [
      keras.Input((6,), dtype="int32"),
      keras.layers.Embedding(8, 3),
      keras.layers.Flatten(),
      keras.layers.Dense(2),
    ]
  )


@pytest.mark.parametrize("static_shapes", [False, True])
def test_embedding_norms_by_sorted_runs_match_materialised_gradients(static_shapes):
  # With static shapes (XLA) the runs are summed by an unsorted segment sum, without by the
  # sorted one.
  x, y = _REPEATED_IDS, np.array([0, 1, 1, 0], np.int32)
  taps = clipping.GradientTaps(_repeated_ids_model(), static_shapes=static_shapes)
  norms = tf.function(
    lambda x, y: taps.backward(x, y, LOSS, tf.ones([4])).squared_norms(), jit_compile=static_shapes
  )
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.ones([4])).materialize()
  expected = sum(np.sum(np.reshape(np.asarray(g), (4, -1)) ** 2, axis=1) for g in grads)
  np.testing.assert_allclose(norms(tf.constant(x), tf.constant(y)), expected, rtol=1e-5)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_embedding_clipped_sum_of_repeated_ids_matches_loop(static_shapes):
  # The runs' weighted sums go onto their ids by a sorted segment sum (rows up to the largest
  # id used, then padded to the vocabulary), or with static shapes by an unsorted one.
  model = _repeated_ids_model()
  x, y = _REPEATED_IDS, np.array([0, 1, 1, 0], np.int32)
  mask = np.array([1, 1, 0, 1], np.float32)
  taps = clipping.GradientTaps(model, static_shapes=static_shapes)
  clipped_sum = tf.function(
    lambda x, y, mask: clipping.per_example_clipped_sum(
      taps.backward(x, y, LOSS, mask), mask, 0.05
    ),
    jit_compile=static_shapes,
  )
  _assert_close(
    clipped_sum(tf.constant(x), tf.constant(y), tf.constant(mask)),
    clipping.reference_clipped_sum(model, LOSS, x, y, 0.05, mask=mask),
  )


def test_embedding_ids_counted_from_the_end_match_loop():
  # Keras looks negative ids up from the end of the table (-1 is the last row, -8 the first).
  model = _repeated_ids_model()
  x = np.array([[-1, 7, -1, 2, -8, 0], [3, -2, 6, 6, -8, 1]], np.int32)
  y = np.array([0, 1], np.int32)
  grads = clipping.GradientTaps(model).backward(tf.constant(x), tf.constant(y), LOSS, tf.ones([2]))
  _assert_close(
    clipping.per_example_clipped_sum(grads, tf.ones([2]), 0.05),
    clipping.reference_clipped_sum(model, LOSS, x, y, 0.05),
  )


@pytest.mark.parametrize("microbatches", [False, True])
def test_embedding_ids_outside_the_table_under_xla_are_the_rows_xla_looked_up(microbatches):
  # XLA's gather clamps ids outside the table (CPU's raises): -9 and -13 (-1 and -5 from the
  # end) are looked up in row 0, 8 and 40 in row 7. Found by an attack review: the run of -9
  # was counted apart from row 0's own run but summed onto row 0 (1.2 C for one example), and
  # with microbatches an id of 8 in example b went to example b + 1's gradient.
  model = _repeated_ids_model()
  x = np.array([[0, -9, -13, 3, 8, 40], [7, 7, 1, -1, 0, -20], [2, 8, 2, 0, -9, 5]], np.int32)
  y = np.array([1, 0, 1], np.int32)
  mask = np.array([1, 1, 1], np.float32)
  microbatch_ids = np.array([0, 1, 1], np.int32)
  taps = clipping.GradientTaps(model, static_shapes=True)

  def clipped_sum(x, y, mask):
    grads = taps.backward(x, y, LOSS, mask)
    if not microbatches:
      return clipping.per_example_clipped_sum(grads, mask, 1e-3)
    sums, counts, _ = clipping.microbatch_sums(grads, mask, tf.constant(microbatch_ids), 2)
    return clipping.clipped_microbatch_sum(sums, counts, 1e-3)

  actual = tf.function(clipped_sum, jit_compile=True)(
    tf.constant(x), tf.constant(y), tf.constant(mask)
  )
  clamped = np.clip(np.where(x < 0, x + 8, x), 0, 7)
  _assert_close(
    actual,
    clipping.reference_clipped_sum(
      model,
      LOSS,
      clamped,
      y,
      1e-3,
      mask=mask,
      **({"microbatch_ids": microbatch_ids, "num_microbatches": 2} if microbatches else {}),
    ),
  )


def test_embedding_norms_of_an_empty_batch_are_empty():
  taps = clipping.GradientTaps(models.embedding_model())
  grads = taps.backward(tf.zeros([0, 5], tf.int32), tf.zeros([0], tf.int32), LOSS, tf.zeros([0]))
  assert grads.squared_norms().shape == (0,)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_an_embedding_of_no_positions_has_zero_norms_and_sum(static_shapes):
  model = keras.Sequential(
    [
      keras.Input((0,), dtype="int32"),
      keras.layers.Embedding(7, 3),
      keras.layers.GlobalAveragePooling1D(),
      keras.layers.Dense(2),
    ]
  )
  taps = clipping.GradientTaps(model, static_shapes=static_shapes)
  embedding_tap = taps.taps[0]
  ids, g = tf.zeros([3, 0], tf.int32), tf.zeros([3, 0, 3])

  def norms_and_sum(ids, g):
    embedding_tap.records = [(ids, None)]
    prepared = embedding_tap.prepare([g])
    return embedding_tap.squared_norms(prepared), embedding_tap.weighted_sum(prepared, tf.ones([3]))

  norms, (summed,) = tf.function(norms_and_sum, jit_compile=static_shapes)(ids, g)
  np.testing.assert_array_equal(norms, np.zeros(3))
  np.testing.assert_array_equal(summed, np.zeros([7, 3]))


def test_ghost_norm_choice_does_not_depend_on_a_known_batch_size():
  # The tutorial CNN's dense layers are cheaper by ghost norms (one position each); with an
  # unknown batch size the choice once fell to materialised per-example gradients (+20% step).
  model = models_lib.tutorial_cnn()
  x, y = np.zeros([4, 28, 28, 1], np.float32), np.zeros([4], np.int32)
  taps = clipping.GradientTaps(model)

  def uses_ghost_norms(x, y, mask):
    grads = taps.backward(x, y, LOSS, mask)
    return [method == "ghost" for _, method in grads.norm_methods()]

  static = uses_ghost_norms(tf.constant(x), tf.constant(y), tf.ones([4]))
  dynamic = _dynamic_batch_function(lambda *a: tf.constant(uses_ghost_norms(*a)), x, y)
  # conv1: per-example (196 positions); conv2: per-example (25 positions, 8192 values: fewer
  # operations than ghost norms); dense layers (one position): ghost.
  assert static == [False, False, True, True]
  assert list(dynamic(x, y, tf.ones([4])).numpy()) == static


@pytest.mark.parametrize("kind", sorted(models.MODELS))
def test_microbatch_clipped_sum_matches_loop(kind):
  model = models.MODELS[kind]()
  x, y = models.batch_for(kind, BATCH, seed=1)
  mask = np.ones(BATCH, np.float32)
  mask[[0, 5]] = 0.0
  ids = np.array([0, 1, 2, 0, 1, 2, 3, 3, 0, 1, 2, 3], np.int32)
  taps = clipping.GradientTaps(model)
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.constant(mask))
  sums, counts, _ = clipping.microbatch_sums(grads, tf.constant(mask), tf.constant(ids), 5)
  actual = clipping.clipped_microbatch_sum(sums, counts, 0.1)
  expected = clipping.reference_clipped_sum(
    model, LOSS, x, y, 0.1, mask=mask, microbatch_ids=ids, num_microbatches=5
  )
  _assert_close(actual, expected)


@pytest.mark.parametrize(
  "kind", ["dense", "conv2d", "conv1d", "embedding", "attention", "recurrent"]
)
def test_fast_taps_cover_every_variable_of_supported_layers(kind):
  taps = clipping.GradientTaps(models.MODELS[kind]())
  assert not taps.fallback_variables


def test_per_example_norms_match_materialised_gradients():
  model = models.conv2d_model()
  x, y = models.batch_for("conv2d", BATCH)
  grads = clipping.GradientTaps(model).backward(
    tf.constant(x), tf.constant(y), LOSS, tf.ones([BATCH])
  )
  materialised = grads.materialize()
  expected = sum(np.sum(np.reshape(np.asarray(g), (BATCH, -1)) ** 2, axis=1) for g in materialised)
  np.testing.assert_allclose(grads.squared_norms(), expected, rtol=1e-5)


def test_fallback_model_really_uses_the_fallback():
  assert clipping.GradientTaps(models.fallback_model()).fallback_variables


def test_batch_normalization_is_refused():
  model = keras.Sequential(
    [
      keras.Input((4,)),
      keras.layers.Dense(3),
      keras.layers.BatchNormalization(),
      keras.layers.Dense(2),
    ]
  )
  with pytest.raises(ValueError, match="BatchNormalization"):
    clipping.GradientTaps(model)


def test_model_call_is_restored_after_recording():
  model = models.dense_model()
  taps = clipping.GradientTaps(model)
  taps.backward(tf.ones([2, 6]), tf.zeros([2], tf.int32), LOSS, tf.ones([2]))
  assert all("call" not in tap.layer.__dict__ for tap in taps.taps)


def test_scalar_losses_are_refused():
  from dp_tfx.keras import per_example_loss

  with pytest.raises(ValueError, match="one value per example"):
    per_example_loss(lambda y, p: tf.reduce_mean(p))(tf.zeros([2]), tf.zeros([2, 3]))


class _Scale(keras.layers.Layer):
  """y = x * s, one weight per feature: a user's own layer, which no built-in tap knows."""

  def build(self, input_shape):
    self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal")

  def call(self, inputs):
    return inputs * self.scale


class _ScaleTap(clipping.LayerTap):
  """Per-example gradient of s: the sum over calls of x * dL/dy."""

  def kernel(self):
    return self.layer.scale

  def bias(self):
    return None

  def forward(self, inputs, *args, **kwargs):
    outputs = inputs * self.layer.scale
    self.records.append((inputs, outputs))
    return outputs

  def prepare(self, output_grads):
    return tf.add_n([record[0] * g for record, g in zip(self.records, output_grads)])

  def squared_norms(self, prepared):
    return tf.reduce_sum(tf.square(prepared), axis=1)

  def weighted_sum(self, prepared, weights):
    return [tf.tensordot(weights, prepared, axes=1)]

  def per_example(self, prepared):
    return [prepared]


def test_a_registered_tap_gives_a_users_layer_the_fast_path():
  clipping.register_tap(_Scale, _ScaleTap)
  scale = _Scale()
  model = keras.Sequential(
    [keras.Input((6,)), keras.layers.Dense(5), scale, scale, keras.layers.Dense(3)]
  )  # shared: two calls of one layer
  x, y = models.batch_for("dense", BATCH, seed=3)
  taps = clipping.GradientTaps(model)
  assert not taps.fallback_variables
  assert [type(tap) for tap in taps.taps].count(_ScaleTap) == 1
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.ones([BATCH]))
  actual = clipping.per_example_clipped_sum(grads, tf.ones([BATCH]), 0.05)
  _assert_close(actual, clipping.reference_clipped_sum(model, LOSS, x, y, 0.05))


def test_a_subclass_of_a_tapped_layer_takes_the_fallback():
  # A subclass may change the maths (here: the kernel is squared), so the Dense tap must not
  # assume Dense's; the fallback's gradients are still right.
  class SquaredDense(keras.layers.Dense):
    def call(self, inputs):
      return keras.ops.matmul(inputs, keras.ops.square(self.kernel)) + self.bias

  model = keras.Sequential([keras.Input((6,)), SquaredDense(4), keras.layers.Dense(3)])
  x, y = models.batch_for("dense", BATCH, seed=4)
  taps = clipping.GradientTaps(model)
  assert [v.path for v in taps.fallback_variables] == [v.path for v in model.layers[0].weights]
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.ones([BATCH]))
  actual = clipping.per_example_clipped_sum(grads, tf.ones([BATCH]), 0.05)
  _assert_close(actual, clipping.reference_clipped_sum(model, LOSS, x, y, 0.05))


def test_register_tap_takes_only_layer_taps():
  with pytest.raises(TypeError, match="LayerTap subclass"):
    clipping.register_tap(_Scale, object)


@pytest.mark.parametrize(
  "layer, tapped",
  [
    (lambda: keras.layers.LSTM(3, go_backwards=True), True),
    (lambda: keras.layers.LSTM(3, unroll=True, use_bias=False), True),
    (lambda: keras.layers.GRU(3, go_backwards=True, return_sequences=True), True),
    (lambda: keras.layers.SimpleRNN(3, activation=None, return_sequences=True), True),
    (lambda: keras.layers.GRU(3, reset_after=False), False),  # the state is scaled before U
    (lambda: keras.layers.LSTM(3, dropout=0.5), False),  # a dropout mask the tap cannot redraw
  ],
)
@pytest.mark.parametrize("mask_zero", [False, True])
@pytest.mark.filterwarnings("ignore:.*does not support masking")  # Flatten drops the mask
def test_recurrent_variants_match_loop_or_take_the_fallback(layer, tapped, mask_zero):
  recurrent = layer()
  model = keras.Sequential(
    [
      keras.Input((6,), dtype="int32"),
      keras.layers.Embedding(models.VOCAB, 4, mask_zero=mask_zero),
      recurrent,
      keras.layers.Flatten(),
      keras.layers.Dense(3),
    ]
  )
  x, y = models.batch_for("recurrent", BATCH, seed=6)
  x = np.concatenate([x, np.zeros([BATCH, 1], np.int32)], axis=1)  # a padded last step
  taps = clipping.GradientTaps(model)
  assert any(tap.layer is recurrent for tap in taps.taps) == tapped
  mask = np.ones(BATCH, np.float32)
  mask[5] = 0.0
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.constant(mask))
  actual = clipping.per_example_clipped_sum(grads, tf.constant(mask), 0.05)
  # Dropout is off in the reference (training=True there would draw other masks): compare the
  # tapped layers only where the step is deterministic.
  if not recurrent.cell.dropout:
    _assert_close(actual, clipping.reference_clipped_sum(model, LOSS, x, y, 0.05, mask=mask))


@pytest.mark.parametrize("build_products", [False, True], ids=["ghost", "products"])
def test_recurrent_taps_match_loop_by_ghost_norms_and_by_built_products(
  monkeypatch, build_products
):
  # Which way a shape goes depends on its sizes (linear.outer_products): both must be exact.
  from dp_tfx.clipping import linear, recurrent

  def forced(a, g):
    return linear.OuterProducts(a, g, tf.einsum("btk,btj->bkj", a, g) if build_products else None)

  monkeypatch.setattr(recurrent, "outer_products", forced)
  model = models.recurrent_model()
  x, y = models.batch_for("recurrent", BATCH, seed=8)
  mask = np.ones(BATCH, np.float32)
  mask[3] = 0.0
  grads = clipping.GradientTaps(model).backward(
    tf.constant(x), tf.constant(y), LOSS, tf.constant(mask)
  )
  recurrent_methods = {
    method
    for name, method in grads.norm_methods()
    if "dense" not in name and "embedding" not in name
  }
  assert recurrent_methods == {"per_example" if build_products else "ghost"}
  _assert_close(
    clipping.per_example_clipped_sum(grads, tf.constant(mask), 0.05),
    clipping.reference_clipped_sum(model, LOSS, x, y, 0.05, mask=mask),
  )
  materialised = grads.materialize()
  expected = sum(np.sum(np.reshape(np.asarray(g), (BATCH, -1)) ** 2, axis=1) for g in materialised)
  np.testing.assert_allclose(grads.squared_norms(), expected, rtol=1e-5)


def test_a_recurrent_layer_called_twice_sums_both_calls():
  lstm = keras.layers.LSTM(3, return_sequences=True)
  inputs = keras.Input((5,), dtype="int32")
  embedded = keras.layers.Embedding(models.VOCAB, 3)(inputs)
  twice = lstm(lstm(embedded))  # 3 features in, 3 units out: the same weights on both levels
  model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(twice)))
  x, y = models.batch_for("recurrent", BATCH, seed=7)
  taps = clipping.GradientTaps(model)
  assert not taps.fallback_variables
  grads = taps.backward(tf.constant(x), tf.constant(y), LOSS, tf.ones([BATCH]))
  _assert_close(
    clipping.per_example_clipped_sum(grads, tf.ones([BATCH]), 0.05),
    clipping.reference_clipped_sum(model, LOSS, x, y, 0.05),
  )
