"""The tap of Embedding layers."""

from __future__ import annotations

import typing

import keras
import tensorflow as tf

from dp_tfx.clipping.base import LayerTap, flatten_positions, register_tap


class EmbeddingRuns(typing.NamedTuple):
  """An embedding's output gradients, and the same summed per (example, id) pair: a "run" of
  equal ids after all positions are sorted by id, then example.

  Attributes:
    ids: [B, T] the ids looked up.
    grads: [B, T, d] their output gradients.
    run_sums: [R, d] the sum of an example's output gradients at one id: that example's
      gradient row for that id.
    run_ids, run_examples: [R] the id and the example of each run, in id order.
  """

  ids: tf.Tensor
  grads: tf.Tensor
  run_sums: tf.Tensor
  run_ids: tf.Tensor
  run_examples: tf.Tensor


class EmbeddingTap(LayerTap):
  """Embedding: the per-example gradient is the output gradients scattered onto the used rows."""

  def __init__(self, layer: keras.layers.Embedding, static_shapes: bool = False):
    super().__init__(layer)
    self.static_shapes = static_shapes

  @classmethod
  def for_layer(cls, layer, options):
    return cls(layer, static_shapes=options.static_shapes)

  def kernel(self):
    return self.layer.embeddings

  def bias(self):
    return None

  def forward(self, inputs, *args, **kwargs):
    layer = self.layer
    ids = inputs if inputs.dtype in (tf.int32, tf.int64) else tf.cast(inputs, tf.int32)
    vocab = layer.embeddings.shape[0]
    # keras.ops.take's lookup: negative ids count from the end of the table.
    ids = tf.where(ids < 0, ids + vocab, ids)
    z = tf.gather(layer.embeddings, ids)
    # Recorded as the rows used. An id still outside the table fails the lookup on CPU, but
    # XLA's gather clamps it to the first or last row (and a GPU's gives zeros): the norms and
    # the sums must take every position's gradient to one row in [0, vocab), the same for
    # both, or an example's norm could miss what its runs add up to on a shared row.
    self.records.append((tf.clip_by_value(ids, 0, vocab - 1), z))
    return keras.ops.cast(z, layer.compute_dtype)

  def prepare(self, output_grads) -> EmbeddingRuns:
    # One sort of all B*T positions by id (stable: an id's positions stay in example order)
    # serves both the norms and the sum. Each example's gradient is its runs' sums scattered
    # onto their ids, so its squared norm is the sum of its runs' squared norms (T log T + T d
    # work, where the [T, T] same-id matrix times g took T^2 d); and the clipped sum is a
    # sorted segment sum of the weighted runs, which on CPU took half the time of an unsorted
    # one of all positions (text classifier, batch 64: 0.6 against 1.15 ms for norms and sum).
    dim = self.layer.embeddings.shape[-1]
    ids = tf.concat(
      [
        tf.reshape(tf.cast(record[0], tf.int32), [tf.shape(record[0])[0], -1])
        for record in self.records
      ],
      axis=1,
    )
    grads = tf.concat([flatten_positions(g, dim) for g in output_grads], axis=1)
    flat_ids = tf.reshape(ids, [-1])
    order = tf.argsort(flat_ids, stable=True)
    sorted_ids = tf.gather(flat_ids, order)
    examples = order // tf.maximum(tf.shape(ids)[1], 1)
    first_position = tf.ones([tf.minimum(tf.size(flat_ids), 1)], tf.bool)  # none if B*T is 0
    run_starts = tf.concat(
      [first_position, (sorted_ids[1:] != sorted_ids[:-1]) | (examples[1:] != examples[:-1])],
      axis=0,
    )
    runs = tf.cumsum(tf.cast(run_starts, tf.int32)) - 1
    rows = tf.gather(tf.reshape(grads, [-1, dim]), order)
    if self.static_shapes:
      # XLA: no sorted segment sum and no tensor of data-dependent size. One slot per
      # position; the slots after the last run hold zero sums, given id and example 0.
      slots = tf.size(flat_ids)
      run_sums = tf.math.unsorted_segment_sum(rows, runs, slots)
      first_of = lambda values: tf.maximum(tf.math.unsorted_segment_max(values, runs, slots), 0)
    else:
      run_sums = tf.math.segment_sum(rows, runs)
      starts = tf.reshape(tf.where(run_starts), [-1])
      first_of = lambda values: tf.gather(values, starts)
    return EmbeddingRuns(ids, grads, run_sums, first_of(sorted_ids), first_of(examples))

  def norm_method(self, prepared) -> str:
    return "ghost"

  def squared_norms(self, prepared: EmbeddingRuns):
    run_norms = tf.reduce_sum(tf.square(prepared.run_sums), axis=1)
    return tf.math.unsorted_segment_sum(run_norms, prepared.run_examples, tf.shape(prepared.ids)[0])

  def weighted_sum(self, prepared: EmbeddingRuns, weights):
    vocab, dim = self.layer.embeddings.shape
    weighted = prepared.run_sums * tf.gather(weights, prepared.run_examples)[:, None]
    if self.static_shapes:
      return [tf.math.unsorted_segment_sum(weighted, prepared.run_ids, vocab)]
    # The runs are in id order (ids in [0, vocab), as `forward` records them): a sorted segment
    # sum has a row up to the largest id used.
    used = tf.math.segment_sum(weighted, prepared.run_ids)
    return [tf.pad(used, [[0, vocab - tf.shape(used)[0]], [0, 0]])]

  def per_example(self, prepared: EmbeddingRuns):
    vocab, dim = self.layer.embeddings.shape
    batch = tf.shape(prepared.ids)[0]
    offsets = prepared.ids + tf.range(batch)[:, None] * vocab
    sums = tf.math.unsorted_segment_sum(
      tf.reshape(prepared.grads, [-1, dim]), tf.reshape(offsets, [-1]), batch * vocab
    )
    return [tf.reshape(sums, [batch, vocab, dim])]


register_tap(keras.layers.Embedding, EmbeddingTap)
