"""Taps of Dense and convolution layers: z = unfold(x) @ W + b, per output position."""

from __future__ import annotations

import abc
from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from dp_tfx.clipping.base import LayerTap, flatten_positions, register_tap

# Convolutions with patches of at most this many values (kh * kw * in_channels) get their
# per-example kernel gradients from one grouped convolution where the kernels support it
# (`kernels.grouped_filter_gradients_supported`); larger patches, and every patch elsewhere, are
# unfolded by tf.image.extract_patches (2nd tutorial conv layer, 256 values, batch 256: unfold +
# einsum 5.7 ms, the grouped convolution 7.3 ms).
_SMALL_PATCH = 128


class OuterProducts(NamedTuple):
  """Per-example gradients of the form sum_t a_t g_t^T ([B, k, j] from [B, T, k] inputs `a` and
  [B, T, j] output gradients `g`): a Dense layer over T positions, a convolution's patches, a
  recurrent layer's kernels over T time steps.

  `products` holds the per-example products only when building them is cheaper than ghost norms
  (see `outer_products`; norms and sums then both reuse them); `a` may be None when they are
  built another way. A tuple, so that tf.nest sees its tensors.
  """

  a: Optional[tf.Tensor]
  g: tf.Tensor
  products: Optional[tf.Tensor] = None

  @property
  def ghost(self) -> bool:
    return self.products is None

  def squared_norms(self) -> tf.Tensor:
    if not self.ghost:
      return tf.reduce_sum(tf.square(self.products), axis=[1, 2])
    if self.a.shape[1] == 1:  # one position: ||a g^T||^2 = ||a||^2 ||g||^2
      return tf.reduce_sum(tf.square(self.a), axis=[1, 2]) * tf.reduce_sum(
        tf.square(self.g), axis=[1, 2]
      )
    # Ghost norm: ||sum_t a_t g_t^T||^2 = sum_{t,s} (a_t . a_s)(g_t . g_s).
    return tf.reduce_sum(
      tf.matmul(self.a, self.a, transpose_b=True) * tf.matmul(self.g, self.g, transpose_b=True),
      axis=[1, 2],
    )

  def weighted_sum(self, weights) -> tf.Tensor:
    """[k, j] sum_b weights[b] * product b."""
    if self.ghost:  # book-keeping: no per-example gradients
      return tf.matmul(_rows(self.a), _rows(self.g * weights[:, None, None]), transpose_a=True)
    return tf.tensordot(weights, self.products, axes=1)

  def per_example(self) -> tf.Tensor:
    return per_example_products(self.a, self.g) if self.ghost else self.products


# Matmuls rather than tf.einsum: with oneDNN on, an einsum this small cost ~0.15 ms of overhead
# each (text classifier, batch 64: its seven einsums ~1 ms of a 4 ms DP step).
def _rows(tensor: tf.Tensor) -> tf.Tensor:
  """[B, T, n] -> [B * T, n]."""
  return tf.reshape(tensor, [-1, tensor.shape[-1]])


def per_example_products(a: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
  """[B, k, j] sum_t a_t g_t^T from [B, T, k] and [B, T, j]."""
  return tf.matmul(a, g, transpose_a=True)


# Per-example products of at most this many values per example (256 KiB of float32) may be built
# where they take fewer operations than ghost norms, even if they take more memory.
_SMALL_PRODUCT = 1 << 16


def outer_products(a: tf.Tensor, g: tf.Tensor) -> OuterProducts:
  """The products of [B, T, k] inputs and [B, T, j] gradients, built per example where that is
  cheaper than ghost norms.

  Per example, ghost norms take T^2 (k + j) multiply-adds for the Gram matrices, and their
  book-keeping sum T k j more; built products take T k j once, then k j each for the norm and the
  sum. The book-keeping sum is one large matmul over the whole batch, products B small ones: on
  this project's CPUs the large one ran about twice as fast per multiply-add (batch 512, T 32,
  k 97, j 256: 6.5 ms against 10-12 ms), so it counts half. Products are built when they take
  less memory (T (k + j) > k j), or fewer weighted operations (T^2 (k + j) > T k j / 2 + 2 k j)
  while small (_SMALL_PRODUCT). Measured choices: an LSTM's kernels, recurrent kernel and bias
  together over 32 steps (k 97, j 256) get ghost norms (DP step at batch 512: 53 ms, products
  67 ms); the recurrent kernel alone (k 64) would get products.
  """
  positions, k, j = a.shape[1], a.shape[-1], g.shape[-1]
  fewer_operations = positions is None or positions**2 * (k + j) > positions * k * j / 2 + 2 * k * j
  less_memory = positions is None or positions * (k + j) > k * j
  if less_memory or (fewer_operations and k * j <= _SMALL_PRODUCT):
    return OuterProducts(a, g, per_example_products(a, g))
  return OuterProducts(a, g)


def bias_squared_norms(g) -> tf.Tensor:
  """[B] squared norms of a bias's per-example gradients sum_t g_t, from [B, T, j] gradients."""
  return tf.reduce_sum(tf.square(tf.reduce_sum(g, axis=1)), axis=1)


def bias_weighted_sum(g, weights) -> tf.Tensor:
  return tf.reduce_sum(_rows(g * weights[:, None, None]), axis=0)


class LinearTap(LayerTap):
  """Dense and convolutions: z = unfold(x) @ W + b, per position."""

  def kernel(self):
    return self.layer.kernel

  @abc.abstractmethod
  def _unfold(self, inputs: tf.Tensor) -> tf.Tensor:
    """Inputs as [B, T, k] rows, one per output position, matching the kernel's [k, j] layout."""

  def prepare(self, output_grads) -> OuterProducts:
    """The outer products of all recorded calls' inputs and gradients (concatenated along
    positions)."""
    units = self.layer.kernel.shape[-1]
    activations = [self._unfold(record[0]) for record in self.records]
    grads = [flatten_positions(g, units) for g in output_grads]
    a = activations[0] if len(activations) == 1 else tf.concat(activations, axis=1)
    g = grads[0] if len(grads) == 1 else tf.concat(grads, axis=1)
    return outer_products(a, g)

  def norm_method(self, prepared) -> str:
    return "ghost" if prepared.ghost else "per_example"

  def squared_norms(self, prepared) -> tf.Tensor:
    if self.bias() is None:
      return prepared.squared_norms()
    return prepared.squared_norms() + bias_squared_norms(prepared.g)

  def weighted_sum(self, prepared, weights) -> list:
    kernel = tf.reshape(prepared.weighted_sum(weights), self.layer.kernel.shape)
    if self.bias() is None:
      return [kernel]
    return [kernel, bias_weighted_sum(prepared.g, weights)]

  def per_example(self, prepared) -> list:
    batch = tf.shape(prepared.g)[0]
    kernel = tf.reshape(
      prepared.per_example(), tf.concat([[batch], self.layer.kernel.shape], axis=0)
    )
    if self.bias() is None:
      return [kernel]
    return [kernel, tf.reduce_sum(prepared.g, axis=1)]


class DenseTap(LinearTap):
  def forward(self, inputs, *args, **kwargs):
    return self._record_and_activate(
      inputs, keras.ops.matmul(inputs, self.layer.kernel), self.layer.bias
    )

  def _unfold(self, inputs):
    return flatten_positions(inputs, self.layer.kernel.shape[0])


class ConvTap(LinearTap):
  """Conv1D/Conv2D, channels_last, groups=1: per-example gradients via image patches, or for
  small patches by one grouped convolution's filter gradient."""

  def __init__(self, layer, grouped: bool = True):
    super().__init__(layer)
    self._grouped = grouped and int(np.prod(layer.kernel.shape[:-1])) <= _SMALL_PATCH

  def forward(self, inputs, *args, **kwargs):
    return self._record_and_activate(
      inputs, self.layer.convolution_op(inputs, self.layer.kernel), self.bias()
    )

  @classmethod
  def for_layer(cls, layer, options):
    if layer.groups != 1 or layer.data_format != "channels_last" or layer.padding == "causal":
      return None
    return cls(layer, grouped=options.grouped_convolutions)

  def prepare(self, output_grads):
    if not self._grouped:
      return super().prepare(output_grads)
    # Small patches: the unfolded inputs would be many times the inputs (the tutorial CNN's first
    # layer: 64x), so build the per-example kernel gradients directly instead; norms and sums
    # reuse them, and no unfolded inputs are needed.
    units = self.layer.kernel.shape[-1]
    kernel_grads = tf.add_n(
      [
        self._per_example_kernel_grads(record[0], grad)
        for record, grad in zip(self.records, output_grads)
      ]
    )
    grads = [flatten_positions(g, units) for g in output_grads]
    g = grads[0] if len(grads) == 1 else tf.concat(grads, axis=1)
    batch = tf.shape(g)[0]
    return OuterProducts(None, g, tf.reshape(kernel_grads, [batch, -1, units]))

  def _per_example_kernel_grads(self, inputs, output_grads):
    """[B, *kernel.shape]: every example's filter gradient from one grouped convolution.

    Folding the batch into the channels ([1, H, W, B * in]) and giving the kernel B groups of
    output channels makes each group's filter gradient one example's; oneDNN computes all of them
    in one pass (tutorial CNN, first layer, batch 256: 5 ms against 8 ms for unfold + einsum).
    """
    layer = self.layer
    strides, dilation = list(layer.strides), list(layer.dilation_rate)
    kernel_shape = list(layer.kernel.shape)
    if layer.rank == 1:  # a 1-D convolution is a 2-D one of height 1
      inputs, output_grads = inputs[:, None], output_grads[:, None]
      strides, dilation, kernel_shape = [1, *strides], [1, *dilation], [1, *kernel_shape]
    batch = tf.shape(inputs)[0]
    height, width, channels = inputs.shape[1:]
    out_height, out_width, units = output_grads.shape[1:]
    folded = tf.reshape(tf.transpose(inputs, [1, 2, 0, 3]), [1, height, width, -1])
    folded_grads = tf.reshape(
      tf.transpose(output_grads, [1, 2, 0, 3]), [1, out_height, out_width, -1]
    )
    # The filter gradient of a convolution with B groups of `units` output channels.
    filter_grads = tf.raw_ops.Conv2DBackpropFilter(
      input=folded,
      filter_sizes=tf.stack([*kernel_shape[:-1], batch * units]),
      out_backprop=folded_grads,
      strides=[1, *strides, 1],
      padding=layer.padding.upper(),
      dilations=[1, *dilation, 1],
    )
    filter_grads = tf.reshape(filter_grads, [*kernel_shape[:-1], batch, units])
    per_example = tf.transpose(filter_grads, [3, 0, 1, 2, 4])
    return tf.reshape(per_example, tf.concat([[batch], layer.kernel.shape], axis=0))

  def _unfold(self, inputs):
    layer = self.layer
    kernel_size, strides, dilation = layer.kernel_size, layer.strides, layer.dilation_rate
    if layer.rank == 1:  # a 1-D convolution is a 2-D one of height 1
      inputs = inputs[:, None]
      kernel_size, strides, dilation = (1, *kernel_size), (1, *strides), (1, *dilation)
    patches = tf.image.extract_patches(
      inputs,
      sizes=[1, *kernel_size, 1],
      strides=[1, *strides, 1],
      rates=[1, *dilation, 1],
      padding=layer.padding.upper(),
    )
    return flatten_positions(patches, int(np.prod(layer.kernel.shape[:-1])))


register_tap(keras.layers.Dense, DenseTap)
register_tap(keras.layers.Conv1D, ConvTap)
register_tap(keras.layers.Conv2D, ConvTap)
