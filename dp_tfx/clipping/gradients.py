"""Per-example gradients of a model from one forward and one backward pass: the taps' layers by
their fast paths, every other trainable variable by vectorised per-example gradients."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import keras
import tensorflow as tf

from dp_tfx import kernels
from dp_tfx.clipping import model_checks
from dp_tfx.clipping.base import TapOptions, tap_for

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def zero_rows(keep: tf.Tensor, tensor):
  """`tensor` with the rows (first axis) where `keep` is False replaced by zeros; anything else
  than a tensor as it is. By selection: 0 * NaN is NaN."""
  if not tf.is_tensor(tensor) or tensor.shape.rank == 0:
    return tensor
  rows = tf.reshape(keep, [-1] + [1] * (tensor.shape.rank - 1))
  return tf.where(rows, tensor, tf.zeros_like(tensor))


def squared_row_norms(tensors, like: tf.Tensor) -> tf.Tensor:
  """[B] squared norms of the rows (first axis) across `tensors` (zeros like `like` if none)."""
  total = tf.zeros_like(like)
  for tensor in tensors:
    total += tf.reduce_sum(tf.square(tf.reshape(tensor, [tf.shape(tensor)[0], -1])), axis=1)
  return total


class PerExampleGradients:
  """The per-example gradients of one physical batch, kept implicit where a tap allows it.

  Attributes:
    losses: [B] per-example losses (padded slots included; mask them yourself).
    predictions: the model's outputs for the batch.
  """

  def __init__(
    self,
    taps,
    tap_grads,
    fallback_jacobians,
    variables,
    losses,
    predictions,
    records=None,
    separate_fallback: Optional[Callable[[], list]] = None,
  ):
    self._taps = taps
    self._tap_grads = tap_grads
    self._records = [tap.records for tap in taps] if records is None else records
    self._prepared = [
      self._prepare(tap, tap_records, grads)
      for tap, tap_records, grads in zip(taps, self._records, tap_grads)
    ]
    self._fallback = fallback_jacobians
    self._separate_fallback = separate_fallback
    self._variables = variables
    self.losses = losses
    self.predictions = predictions

  @staticmethod
  def _prepare(tap, records, grads):
    """tap.prepare(grads) on `records` in place of the tap's own."""
    own, tap.records = tap.records, records
    try:
      return tap.prepare(grads)
    finally:
      tap.records = own

  def without_nonfinite_units(self) -> tuple:
    """(these gradients with every unit whose gradient norm is NaN or infinite made exactly
    zero, the [B] squared norms before that).

    The unit's rows of the taps' records, of their output gradients and of the fallback's
    Jacobians are replaced by zeros (by selection: through a weight of 0, 0 * NaN is NaN). The
    fallback's Jacobians are taken again one example at a time first: in the batch's backward
    pass one example's NaN reaches every row (0 * NaN in the batched weight gradients).
    """
    fallback = self._fallback
    if fallback and self._separate_fallback is not None:
      fallback = self._separate_fallback()
    squared_norms = self._tap_squared_norms() + squared_row_norms(fallback, self.losses)
    keep = tf.math.is_finite(squared_norms)
    zero = lambda tensor: zero_rows(keep, tensor)
    records = [
      [tuple(zero(t) for t in record) for record in tap_records] for tap_records in self._records
    ]
    zeroed = PerExampleGradients(
      self._taps,
      [[zero(g) for g in grads] for grads in self._tap_grads],
      [zero(j) for j in fallback],
      self._variables,
      zero(self.losses),
      tf.nest.map_structure(zero, self.predictions),
      records=records,
    )
    return zeroed, squared_norms

  def norm_methods(self) -> list:
    """[(layer name, "ghost" or "per_example")]: how each tap computes its norms for this batch
    (the choice depends on the layer's shapes; for tests and profiling)."""
    return [
      (tap.layer.name, tap.norm_method(prepared))
      for tap, prepared in zip(self._taps, self._prepared)
    ]

  def prepared_tensors(self) -> list:
    """Every tensor the taps prepared from the backward pass (for profiling that stage)."""
    return [t for prepared in self._prepared for t in tf.nest.flatten(prepared) if t is not None]

  def _tap_squared_norms(self) -> tf.Tensor:
    total = tf.zeros_like(self.losses)
    for tap, prepared in zip(self._taps, self._prepared):
      total += tap.squared_norms(prepared)
    return total

  def squared_norms(self) -> tf.Tensor:
    """[B] squared L2 norms of the per-example gradients over all trainable variables."""
    return self._tap_squared_norms() + squared_row_norms(self._fallback, self.losses)

  def _assemble(self, tap_parts, fallback_parts) -> list:
    by_variable = {}
    for tap, parts in zip(self._taps, tap_parts):
      for variable, part in zip(tap.variables, parts):
        by_variable[id(variable)] = part
    fallback_variables = [v for v in self._variables if id(v) not in by_variable]
    for variable, part in zip(fallback_variables, fallback_parts):
      by_variable[id(variable)] = part
    return [by_variable[id(v)] for v in self._variables]

  def weighted_sum(self, weights: tf.Tensor) -> list:
    """sum_b weights[b] * g_b for every trainable variable (the clipped sum for clip factors)."""
    tap_parts = [
      tap.weighted_sum(prepared, weights) for tap, prepared in zip(self._taps, self._prepared)
    ]
    fallback_parts = [tf.tensordot(weights, j, axes=1) for j in self._fallback]
    return self._assemble(tap_parts, fallback_parts)

  def materialize(self) -> list:
    """[B, *variable.shape] per-example gradients for every trainable variable."""
    tap_parts = [tap.per_example(prepared) for tap, prepared in zip(self._taps, self._prepared)]
    return self._assemble(tap_parts, list(self._fallback))


class GradientTaps:
  """Per-example gradients of a Keras model, by fast per-layer taps and a vectorised fallback.

  Args:
    model: a built Keras model whose per-example losses do not depend on other examples.
    static_shapes: use only computations whose shapes do not depend on the batch size (for XLA,
      to which the batch inside the accumulation loop is dynamic): convolutions are then always
      unfolded, never given a kernel with a group per example.
    grouped_convolutions: whether small-patch convolutions may take their per-example kernel
      gradients from one grouped convolution. None (the default): where this process's kernels
      compute them (oneDNN and cuDNN do, Eigen does not) and shapes need not be static. True
      where they do not raises ValueError.

  Raises:
    ValueError: for models with layers that mix examples (BatchNormalization).
  """

  def __init__(
    self,
    model: keras.Model,
    static_shapes: bool = False,
    grouped_convolutions: Optional[bool] = None,
  ):
    layers = model_checks.checked_layers(model)
    supported = kernels.grouped_filter_gradients_supported()
    if grouped_convolutions and static_shapes:
      raise ValueError("grouped convolutions need a static batch size; static_shapes excludes them")
    if grouped_convolutions and not supported:
      raise ValueError(
        "this TensorFlow's kernels do not compute grouped-convolution filter "
        "gradients (Eigen's CPU kernels, with oneDNN off)"
      )
    if grouped_convolutions is None:
      grouped_convolutions = supported and not static_shapes
    self.model = model
    self.static_shapes = static_shapes
    self.grouped_convolutions = grouped_convolutions
    self.variables = list(model.trainable_variables)
    options = TapOptions(grouped_convolutions=grouped_convolutions, static_shapes=static_shapes)
    self.taps = [tap for tap in (tap_for(layer, options) for layer in layers) if tap is not None]
    covered = {id(v) for tap in self.taps for v in tap.variables}
    self.fallback_variables = [v for v in self.variables if id(v) not in covered]

  @contextlib.contextmanager
  def recording(self, tape: tf.GradientTape):
    """Within it (and within `tape`), the model's calls record what the taps need: the forward
    pass of `backward`, also for profiling it alone."""
    for tap in self.taps:
      tap.install(tape.watch)
    try:
      yield
    finally:
      for tap in self.taps:
        tap.uninstall()

  def backward(
    self, x, y, loss_fn: LossFn, mask: tf.Tensor, training: bool = True
  ) -> PerExampleGradients:
    """One forward and one backward pass over a physical batch.

    Args:
      x, y: the batch's features and labels.
      loss_fn: maps (y, predictions) to [B] per-example losses.
      mask: [B] 1 for real examples, 0 for padding; padded slots get zero gradients.
      training: passed to the model call.
    """
    with tf.GradientTape(persistent=bool(self.fallback_variables)) as tape:
      with self.recording(tape):
        predictions = self.model(x, training=training)
      losses = loss_fn(y, predictions)
      masked = losses * tf.cast(mask, losses.dtype)
      total = tf.reduce_sum(masked)
    outputs = [tap.outputs() for tap in self.taps]
    flat_outputs = [z for group in outputs for z in group]
    flat_grads = tape.gradient(
      total, flat_outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    tap_grads, start = [], 0
    for group in outputs:
      tap_grads.append(flat_grads[start : start + len(group)])
      start += len(group)
    fallback = []
    if self.fallback_variables:
      fallback = tape.jacobian(
        masked, self.fallback_variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
      )
      del tape
    return PerExampleGradients(
      self.taps,
      tap_grads,
      fallback,
      self.variables,
      losses,
      predictions,
      separate_fallback=lambda: self._fallback_one_at_a_time(x, y, loss_fn, mask, training),
    )

  def _fallback_one_at_a_time(self, x, y, loss_fn: LossFn, mask: tf.Tensor, training: bool) -> list:
    """[B, *variable.shape] per-example gradients of the fallback variables, each from the
    example's own forward and backward pass (vectorised over the batch): slower than the
    batch's Jacobian, and no example's NaN reaches another's row."""

    def one_example(example):
      x_b, y_b, mask_b = tf.nest.map_structure(lambda t: t[None], example)
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loss_fn(y_b, self.model(x_b, training=training)) * mask_b)
      return tape.gradient(
        loss, self.fallback_variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
      )

    return tf.vectorized_map(one_example, (x, y, mask))
