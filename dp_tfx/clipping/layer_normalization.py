"""The tap of LayerNormalization layers (normalising over the last axis, without RMS scaling)."""

from __future__ import annotations

import keras
import tensorflow as tf

from dp_tfx.clipping.base import (
  LayerTap,
  flatten_positions,
  register_tap,
  squared_norms_of,
  sum_per_example,
)


class LayerNormalizationTap(LayerTap):
  """LayerNormalization y = gamma * xhat + beta: per-example gradients are sums over positions of
  g * xhat (gamma) and g (beta)."""

  @classmethod
  def for_layer(cls, layer, options):
    return cls(layer) if cls.supports(layer) else None

  @staticmethod
  def supports(layer) -> bool:
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    return not layer.rms_scaling and axes == [-1]

  def kernel(self):
    return self.layer.gamma

  def bias(self):
    return self.layer.beta

  def forward(self, inputs, *args, **kwargs):
    layer = self.layer
    normalized = keras.ops.layer_normalization(inputs, None, None, layer.axis, layer.epsilon)
    z = normalized
    if layer.gamma is not None:
      z = z * layer.gamma
    if layer.beta is not None:
      z = z + layer.beta
    self.records.append((normalized, z))
    return keras.ops.cast(z, layer.compute_dtype)

  def prepare(self, output_grads):
    features = self.records[0][0].shape[-1]
    return [
      (flatten_positions(record[0], features), flatten_positions(g, features))
      for record, g in zip(self.records, output_grads)
    ]

  def _parts(self, normalized, grads, reduce_axes):
    parts = []
    if self.layer.gamma is not None:
      parts.append(tf.reduce_sum(grads * normalized, axis=reduce_axes))
    if self.layer.beta is not None:
      parts.append(tf.reduce_sum(grads, axis=reduce_axes))
    return parts

  def per_example(self, prepared):
    return sum_per_example(prepared, lambda n, g: self._parts(n, g, [1]))

  def squared_norms(self, prepared):
    return squared_norms_of(self.per_example(prepared))

  def weighted_sum(self, prepared, weights):
    return sum_per_example(
      prepared, lambda n, g: self._parts(n, g * weights[:, None, None], [0, 1])
    )


register_tap(keras.layers.LayerNormalization, LayerNormalizationTap)
