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


class PerExampleGradients:
  """The per-example gradients of one physical batch, kept implicit where a tap allows it.

  Attributes:
    losses: [B] per-example losses (padded slots included; mask them yourself).
    predictions: the model's outputs for the batch.
  """

  def __init__(self, taps, tap_grads, fallback_jacobians, variables, losses, predictions):
    self._taps = taps
    self._prepared = [tap.prepare(grads) for tap, grads in zip(taps, tap_grads)]
    self._fallback = fallback_jacobians
    self._variables = variables
    self.losses = losses
    self.predictions = predictions

  def norm_methods(self) -> list:
    """[(layer name, "ghost" or "per_example")]: how each tap computes its norms for this batch
    (the choice depends on the layer's shapes; for tests and profiling)."""
    return [(tap.layer.name, tap.norm_method(prepared))
            for tap, prepared in zip(self._taps, self._prepared)]

  def prepared_tensors(self) -> list:
    """Every tensor the taps prepared from the backward pass (for profiling that stage)."""
    return [t for prepared in self._prepared for t in tf.nest.flatten(prepared) if t is not None]

  def _fallback_flat(self):
    return [tf.reshape(j, [tf.shape(j)[0], -1]) for j in self._fallback]

  def squared_norms(self) -> tf.Tensor:
    """[B] squared L2 norms of the per-example gradients over all trainable variables."""
    total = tf.zeros_like(self.losses)
    for tap, prepared in zip(self._taps, self._prepared):
      total += tap.squared_norms(prepared)
    for flat in self._fallback_flat():
      total += tf.reduce_sum(tf.square(flat), axis=1)
    return total

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
    tap_parts = [tap.weighted_sum(prepared, weights)
                 for tap, prepared in zip(self._taps, self._prepared)]
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

  def __init__(self, model: keras.Model, static_shapes: bool = False,
               grouped_convolutions: Optional[bool] = None):
    layers = model_checks.checked_layers(model)
    supported = kernels.grouped_filter_gradients_supported()
    if grouped_convolutions and static_shapes:
      raise ValueError("grouped convolutions need a static batch size; static_shapes excludes them")
    if grouped_convolutions and not supported:
      raise ValueError("this TensorFlow's kernels do not compute grouped-convolution filter "
                       "gradients (Eigen's CPU kernels, with oneDNN off)")
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

  def backward(self, x, y, loss_fn: LossFn, mask: tf.Tensor,
               training: bool = True) -> PerExampleGradients:
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
    flat_grads = tape.gradient(total, flat_outputs,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
    tap_grads, start = [], 0
    for group in outputs:
      tap_grads.append(flat_grads[start:start + len(group)])
      start += len(group)
    fallback = []
    if self.fallback_variables:
      fallback = tape.jacobian(masked, self.fallback_variables,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
      del tape
    return PerExampleGradients(self.taps, tap_grads, fallback, self.variables, losses,
                               predictions)
