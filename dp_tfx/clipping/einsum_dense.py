"""The tap of EinsumDense layers (the projections of MultiHeadAttention, and others)."""

from __future__ import annotations

import keras
import tensorflow as tf

from dp_tfx.clipping.base import (
  LayerTap,
  bias_reduction,
  register_tap,
  squared_norms_of,
  sum_per_example,
)


class EinsumDenseTap(LayerTap):
  """EinsumDense "I,K->O" whose first input letter is the batch: per-example kernel gradients are
  the same contraction keeping the batch letter, einsum("I,O->bK")."""

  def __init__(self, layer):
    super().__init__(layer)
    inputs, outputs = layer.equation.split("->")
    self._input_spec, self._kernel_spec = inputs.split(",")
    self._output_spec = outputs
    self._batch = self._input_spec[0]

  @classmethod
  def for_layer(cls, layer, options):
    return cls(layer) if cls.supports(layer) else None

  @staticmethod
  def supports(layer) -> bool:
    equation = layer.equation.replace(" ", "")
    if "..." in equation or equation.count(",") != 1 or "->" not in equation:
      return False
    inputs, outputs = equation.split("->")
    input_spec, kernel_spec = inputs.split(",")
    batch = input_spec[0]
    return (
      outputs[:1] == batch
      and batch not in kernel_spec
      and len(set(kernel_spec)) == len(kernel_spec)
      and set(kernel_spec) <= set(input_spec + outputs)
    )

  def kernel(self):
    return self.layer.kernel

  def bias(self):
    return self.layer.bias

  def forward(self, inputs, *args, **kwargs):
    return self._record_and_activate(
      inputs, keras.ops.einsum(self.layer.equation, inputs, self.layer.kernel), self.layer.bias
    )

  def prepare(self, output_grads):
    return [(record[0], g) for record, g in zip(self.records, output_grads)]

  def _bias_part(self, grads, per_example: bool):
    bias_shape = self.layer.bias.shape
    leading, aligned = bias_reduction(grads.shape.rank, bias_shape, grads.shape)
    reduced = tf.reduce_sum(grads, axis=leading) if leading else grads
    if aligned:
      shift = len(leading)
      reduced = tf.reduce_sum(reduced, axis=[a - shift for a in aligned], keepdims=True)
    return reduced if per_example else tf.reduce_sum(reduced, axis=0)

  def per_example(self, prepared):
    def parts(inputs, grads):
      kernel = tf.einsum(
        f"{self._input_spec},{self._output_spec}->{self._batch}{self._kernel_spec}", inputs, grads
      )
      return [kernel] + ([self._bias_part(grads, True)] if self.layer.bias is not None else [])

    return sum_per_example(prepared, parts)

  def squared_norms(self, prepared):
    return squared_norms_of(self.per_example(prepared))

  def weighted_sum(self, prepared, weights):
    def parts(inputs, grads):
      weighted = grads * tf.reshape(weights, [-1] + [1] * (grads.shape.rank - 1))
      kernel = tf.einsum(
        f"{self._input_spec},{self._output_spec}->{self._kernel_spec}", inputs, weighted
      )
      return [kernel] + ([self._bias_part(weighted, False)] if self.layer.bias is not None else [])

    return sum_per_example(prepared, parts)


register_tap(keras.layers.EinsumDense, EinsumDenseTap)
