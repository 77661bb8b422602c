"""Per-example gradient norms and clipped sums, from one forward and one backward pass.

For Dense, Conv1D/Conv2D and Embedding layers we record each layer's input and pre-activation
output during the forward pass and take the gradient of the summed per-example loss with respect
to the pre-activations only. From those two tensors, per layer:

* the per-example squared gradient norm, either as a "ghost norm" (Gram matrices of inputs and
  output gradients, never building a per-example gradient; cost ~ T^2 for T positions) or from
  the per-example gradient built by one batched einsum (cost ~ parameters), whichever is cheaper;
* the clipped sum sum_b f_b * G_b as one contraction of the inputs with the re-weighted output
  gradients ("book-keeping"), so no second backward pass is needed.

Every other trainable variable falls back to vectorised per-example gradients (tape.jacobian).
`reference_clipped_sum` is the slow, obvious loop over single examples that tests, and users with
their own models, compare against.

Models whose layers mix examples (BatchNormalization) have no per-example gradients and are refused.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from dp_tfx import kernels

# Convolutions with patches of at most this many values (kh * kw * in_channels) get their
# per-example kernel gradients from one grouped convolution where the kernels support it
# (`kernels.grouped_filter_gradients_supported`); larger patches, and every patch elsewhere, are
# unfolded by tf.image.extract_patches (2nd tutorial conv layer, 256 values, batch 256: unfold +
# einsum 5.7 ms, the grouped convolution 7.3 ms).
_SMALL_PATCH = 128

# Guards the division C / norm for an all-zero gradient (padded slots).
_NORM_EPSILON = 1e-12

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _flatten_positions(tensor: tf.Tensor, last_dim: int) -> tf.Tensor:
  """[B, ..., last_dim] -> [B, T, last_dim] where T is the product of the middle axes.

  T stays static when the middle axes are, even with a dynamic batch (Poisson batches without
  XLA): the choice between ghost norms and per-example gradients depends on it.
  """
  per_example = tensor.shape[1:]
  positions = per_example.num_elements() // last_dim if per_example.is_fully_defined() else -1
  return tf.reshape(tensor, [tf.shape(tensor)[0], positions, last_dim])


class _LayerTap(abc.ABC):
  """Records one layer's inputs and pre-activations; turns output gradients into per-example facts.

  Subclasses implement `_forward` (the layer's own maths, recording what is needed) and the three
  per-example operations on the recorded tensors and their output gradients.
  """

  def __init__(self, layer: keras.layers.Layer):
    self.layer = layer
    self.records: List[tuple] = []

  @property
  def variables(self) -> list:
    return [v for v in (self._kernel(), self._bias()) if v is not None]

  @abc.abstractmethod
  def _kernel(self):
    """The layer's main weight variable."""

  def _bias(self):
    return self.layer.bias if getattr(self.layer, "use_bias", False) else None

  @abc.abstractmethod
  def _forward(self, inputs, *args, **kwargs):
    """The layer's own forward maths, recording (inputs, pre-activation outputs)."""

  @abc.abstractmethod
  def prepare(self, output_grads) -> tuple:
    """The recorded inputs and their output gradients, in the form the three methods below take.

    Computed once per backward pass and shared, so unfolding (e.g. convolution patches) is not
    repeated for norms and sums.
    """

  @abc.abstractmethod
  def squared_norms(self, prepared) -> tf.Tensor:
    """[B] squared norms of the per-example gradients of this layer's variables."""

  @abc.abstractmethod
  def weighted_sum(self, prepared, weights) -> list:
    """sum_b weights[b] * (per-example gradient b), per variable of this layer."""

  @abc.abstractmethod
  def per_example(self, prepared) -> list:
    """[B, *variable.shape] per-example gradients, per variable of this layer."""

  def install(self):
    # An instance attribute shadows the class's `call`; Keras's __call__ looks it up per call.
    self.layer.__dict__["call"] = self._forward
    self.records = []

  def uninstall(self):
    self.layer.__dict__.pop("call", None)

  def _record_and_activate(self, inputs, z, bias):
    """Adds the bias, records (inputs, pre-activation) and applies the layer's activation."""
    if bias is not None:
      z = keras.ops.add(z, bias)
    self.records.append((inputs, z))
    activation = getattr(self.layer, "activation", None)
    return activation(z) if activation is not None else z

  def outputs(self) -> List[tf.Tensor]:
    return [record[-1] for record in self.records]


class _LinearTap(_LayerTap):
  """Dense and convolutions: z = unfold(x) @ W + b, per position."""

  def _kernel(self):
    return self.layer.kernel

  @abc.abstractmethod
  def _unfold(self, inputs: tf.Tensor) -> tf.Tensor:
    """Inputs as [B, T, k] rows, one per output position, matching the kernel's [k, j] layout."""

  def prepare(self, output_grads):
    """[B, T, k] inputs and [B, T, j] grads of all recorded calls (concatenated along positions),
    and the [B, k, j] per-example kernel gradients when building them is cheaper than ghost norms
    (then norms and sums both reuse them); else None.
    """
    units = self.layer.kernel.shape[-1]
    activations = [self._unfold(record[0]) for record in self.records]
    grads = [_flatten_positions(g, units) for g in output_grads]
    a = activations[0] if len(activations) == 1 else tf.concat(activations, axis=1)
    g = grads[0] if len(grads) == 1 else tf.concat(grads, axis=1)
    positions, k, j = a.shape[1], a.shape[-1], g.shape[-1]
    ghost = positions is not None and positions * (k + j) <= k * j
    return a, g, None if ghost else tf.einsum("btk,btj->bkj", a, g)

  def squared_norms(self, prepared) -> tf.Tensor:
    a, g, kernel_grads = prepared
    if kernel_grads is None:
      # Ghost norm: ||sum_t a_t g_t^T||^2 = sum_{t,s} (a_t . a_s)(g_t . g_s).
      kernel_sq = tf.reduce_sum(tf.einsum("btk,bsk->bts", a, a) * tf.einsum("btj,bsj->bts", g, g),
                                axis=[1, 2])
    else:
      kernel_sq = tf.reduce_sum(tf.square(kernel_grads), axis=[1, 2])
    if self._bias() is None:
      return kernel_sq
    return kernel_sq + tf.reduce_sum(tf.square(tf.reduce_sum(g, axis=1)), axis=1)

  def weighted_sum(self, prepared, weights) -> list:
    a, g, kernel_grads = prepared
    weighted = g * weights[:, None, None]
    if kernel_grads is None:
      kernel = tf.einsum("btk,btj->kj", a, weighted)  # book-keeping: no per-example gradients
    else:
      kernel = tf.tensordot(weights, kernel_grads, axes=1)
    kernel = tf.reshape(kernel, self.layer.kernel.shape)
    if self._bias() is None:
      return [kernel]
    return [kernel, tf.reduce_sum(weighted, axis=[0, 1])]

  def per_example(self, prepared) -> list:
    a, g, kernel_grads = prepared
    if kernel_grads is None:
      kernel_grads = tf.einsum("btk,btj->bkj", a, g)
    batch = tf.shape(g)[0]
    kernel = tf.reshape(kernel_grads, tf.concat([[batch], self.layer.kernel.shape], axis=0))
    if self._bias() is None:
      return [kernel]
    return [kernel, tf.reduce_sum(g, axis=1)]


class _DenseTap(_LinearTap):

  def _forward(self, inputs, *args, **kwargs):
    return self._record_and_activate(inputs, keras.ops.matmul(inputs, self.layer.kernel),
                                     self.layer.bias)

  def _unfold(self, inputs):
    return _flatten_positions(inputs, self.layer.kernel.shape[0])


class _ConvTap(_LinearTap):
  """Conv1D/Conv2D, channels_last, groups=1: per-example gradients via image patches, or for
  small patches by one grouped convolution's filter gradient."""

  def _forward(self, inputs, *args, **kwargs):
    return self._record_and_activate(inputs, self.layer.convolution_op(inputs, self.layer.kernel),
                                     self._bias())

  def __init__(self, layer, grouped: bool = True):
    super().__init__(layer)
    self._grouped = grouped and int(np.prod(layer.kernel.shape[:-1])) <= _SMALL_PATCH

  def prepare(self, output_grads):
    if not self._grouped:
      return super().prepare(output_grads)
    # Small patches: the unfolded inputs would be many times the inputs (the tutorial CNN's first
    # layer: 64x), so build the per-example kernel gradients directly instead; norms and sums
    # reuse them, and no unfolded inputs are needed.
    units = self.layer.kernel.shape[-1]
    kernel_grads = tf.add_n([self._per_example_kernel_grads(record[0], grad)
                             for record, grad in zip(self.records, output_grads)])
    grads = [_flatten_positions(g, units) for g in output_grads]
    g = grads[0] if len(grads) == 1 else tf.concat(grads, axis=1)
    batch = tf.shape(g)[0]
    return None, g, tf.reshape(kernel_grads, [batch, -1, units])

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
    folded_grads = tf.reshape(tf.transpose(output_grads, [1, 2, 0, 3]),
                              [1, out_height, out_width, -1])
    # The filter gradient of a convolution with B groups of `units` output channels.
    filter_grads = tf.raw_ops.Conv2DBackpropFilter(
        input=folded, filter_sizes=tf.stack([*kernel_shape[:-1], batch * units]),
        out_backprop=folded_grads, strides=[1, *strides, 1], padding=layer.padding.upper(),
        dilations=[1, *dilation, 1])
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
        inputs, sizes=[1, *kernel_size, 1], strides=[1, *strides, 1], rates=[1, *dilation, 1],
        padding=layer.padding.upper())
    return _flatten_positions(patches, int(np.prod(layer.kernel.shape[:-1])))


class _EmbeddingTap(_LayerTap):
  """Embedding: the per-example gradient is the output gradients scattered onto the used rows."""

  def _kernel(self):
    return self.layer.embeddings

  def _bias(self):
    return None

  def _forward(self, inputs, *args, **kwargs):
    layer = self.layer
    ids = inputs if inputs.dtype in (tf.int32, tf.int64) else tf.cast(inputs, tf.int32)
    z = keras.ops.take(layer.embeddings, ids, axis=0)
    self.records.append((ids, z))
    return keras.ops.cast(z, layer.compute_dtype)

  def prepare(self, output_grads):
    dim = self.layer.embeddings.shape[-1]
    ids = [tf.reshape(tf.cast(record[0], tf.int32), [tf.shape(record[0])[0], -1])
           for record in self.records]
    grads = [_flatten_positions(g, dim) for g in output_grads]
    return tf.concat(ids, axis=1), tf.concat(grads, axis=1)

  def squared_norms(self, prepared):
    ids, g = prepared
    same_row = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    return tf.reduce_sum(same_row * tf.einsum("btd,bsd->bts", g, g), axis=[1, 2])

  def weighted_sum(self, prepared, weights):
    ids, g = prepared
    vocab, dim = self.layer.embeddings.shape
    rows = tf.reshape(g * weights[:, None, None], [-1, dim])
    return [tf.math.unsorted_segment_sum(rows, tf.reshape(ids, [-1]), vocab)]

  def per_example(self, prepared):
    ids, g = prepared
    vocab, dim = self.layer.embeddings.shape
    batch = tf.shape(ids)[0]
    offsets = ids + tf.range(batch)[:, None] * vocab
    sums = tf.math.unsorted_segment_sum(tf.reshape(g, [-1, dim]), tf.reshape(offsets, [-1]),
                                        batch * vocab)
    return [tf.reshape(sums, [batch, vocab, dim])]



def _sum_per_example(prepared, fn) -> list:
  """Sums fn(inputs, grads) -> [parts] over the recorded calls of a (possibly shared) layer."""
  totals = None
  for inputs, grads in prepared:
    parts = fn(inputs, grads)
    totals = parts if totals is None else [t + p for t, p in zip(totals, parts)]
  return totals


def _squared_norms_of(per_example: list) -> tf.Tensor:
  return tf.add_n([tf.reduce_sum(tf.reshape(tf.square(p), [tf.shape(p)[0], -1]), axis=1)
                   for p in per_example])


def _bias_reduction(output_rank: int, bias_shape, output_shape):
  """Axes of a [B, ...] output gradient to sum (keepdims) so it takes the broadcast bias's shape."""
  leading = output_rank - 1 - len(bias_shape)
  aligned = [a for a, (b, o) in enumerate(zip(bias_shape, output_shape[1 + leading:]),
                                         start=1 + leading) if b == 1 and o != 1]
  return list(range(1, 1 + leading)), aligned


class _EinsumDenseTap(_LayerTap):
  """EinsumDense "I,K->O" whose first input letter is the batch: per-example kernel gradients are
  the same contraction keeping the batch letter, einsum("I,O->bK")."""

  def __init__(self, layer):
    super().__init__(layer)
    inputs, outputs = layer.equation.split("->")
    self._input_spec, self._kernel_spec = inputs.split(",")
    self._output_spec = outputs
    self._batch = self._input_spec[0]

  @staticmethod
  def supports(layer) -> bool:
    equation = layer.equation.replace(" ", "")
    if "..." in equation or equation.count(",") != 1 or "->" not in equation:
      return False
    inputs, outputs = equation.split("->")
    input_spec, kernel_spec = inputs.split(",")
    batch = input_spec[0]
    return (outputs[:1] == batch and batch not in kernel_spec
            and len(set(kernel_spec)) == len(kernel_spec)
            and set(kernel_spec) <= set(input_spec + outputs))

  def _kernel(self):
    return self.layer.kernel

  def _bias(self):
    return self.layer.bias

  def _forward(self, inputs, *args, **kwargs):
    return self._record_and_activate(
        inputs, keras.ops.einsum(self.layer.equation, inputs, self.layer.kernel), self.layer.bias)

  def prepare(self, output_grads):
    return [(record[0], g) for record, g in zip(self.records, output_grads)]

  def _bias_part(self, grads, per_example: bool):
    bias_shape = self.layer.bias.shape
    leading, aligned = _bias_reduction(grads.shape.rank, bias_shape, grads.shape)
    reduced = tf.reduce_sum(grads, axis=leading) if leading else grads
    if aligned:
      shift = len(leading)
      reduced = tf.reduce_sum(reduced, axis=[a - shift for a in aligned], keepdims=True)
    return reduced if per_example else tf.reduce_sum(reduced, axis=0)

  def per_example(self, prepared):
    def parts(inputs, grads):
      kernel = tf.einsum(
          f"{self._input_spec},{self._output_spec}->{self._batch}{self._kernel_spec}",
          inputs, grads)
      return [kernel] + ([self._bias_part(grads, True)] if self.layer.bias is not None else [])
    return _sum_per_example(prepared, parts)

  def squared_norms(self, prepared):
    return _squared_norms_of(self.per_example(prepared))

  def weighted_sum(self, prepared, weights):
    def parts(inputs, grads):
      weighted = grads * tf.reshape(weights, [-1] + [1] * (grads.shape.rank - 1))
      kernel = tf.einsum(f"{self._input_spec},{self._output_spec}->{self._kernel_spec}", inputs,
                         weighted)
      return [kernel] + ([self._bias_part(weighted, False)] if self.layer.bias is not None else [])
    return _sum_per_example(prepared, parts)


class _LayerNormalizationTap(_LayerTap):
  """LayerNormalization y = gamma * xhat + beta: per-example gradients are sums over positions of
  g * xhat (gamma) and g (beta)."""

  @staticmethod
  def supports(layer) -> bool:
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    return not layer.rms_scaling and axes == [-1]

  def _kernel(self):
    return self.layer.gamma

  def _bias(self):
    return self.layer.beta

  def _forward(self, inputs, *args, **kwargs):
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
    return [(_flatten_positions(record[0], features), _flatten_positions(g, features))
            for record, g in zip(self.records, output_grads)]

  def _parts(self, normalized, grads, reduce_axes):
    parts = []
    if self.layer.gamma is not None:
      parts.append(tf.reduce_sum(grads * normalized, axis=reduce_axes))
    if self.layer.beta is not None:
      parts.append(tf.reduce_sum(grads, axis=reduce_axes))
    return parts

  def per_example(self, prepared):
    return _sum_per_example(prepared, lambda n, g: self._parts(n, g, [1]))

  def squared_norms(self, prepared):
    return _squared_norms_of(self.per_example(prepared))

  def weighted_sum(self, prepared, weights):
    return _sum_per_example(
        prepared, lambda n, g: self._parts(n, g * weights[:, None, None], [0, 1]))


def _tap_for(layer, grouped_convolutions: bool) -> Optional[_LayerTap]:
  """The fast-path tap for a layer, or None when it must use the generic fallback."""
  if not layer.trainable or not layer.trainable_variables:
    return None
  if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
    return None
  kind = type(layer)
  if kind is keras.layers.Dense:
    return _DenseTap(layer)
  if kind in (keras.layers.Conv1D, keras.layers.Conv2D):
    if layer.groups == 1 and layer.data_format == "channels_last" and layer.padding != "causal":
      return _ConvTap(layer, grouped=grouped_convolutions)
    return None
  if kind is keras.layers.Embedding:
    return _EmbeddingTap(layer)
  if kind is keras.layers.EinsumDense and _EinsumDenseTap.supports(layer):
    return _EinsumDenseTap(layer)
  if kind is keras.layers.LayerNormalization and _LayerNormalizationTap.supports(layer):
    return _LayerNormalizationTap(layer)
  return None


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
    if not model.built:
      raise ValueError("build the model (call it on a batch) before making it private")
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    mixing = [layer.name for layer in layers if isinstance(
        layer, keras.layers.BatchNormalization) and layer.trainable]
    if mixing:
      raise ValueError(f"BatchNormalization layers {mixing} mix examples within a batch, so "
                       "per-example gradients (and DP-SGD) are undefined; use LayerNormalization "
                       "or GroupNormalization instead")
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
    self.taps = [tap for tap in (_tap_for(layer, grouped_convolutions) for layer in layers)
                 if tap is not None]
    covered = {id(v) for tap in self.taps for v in tap.variables}
    self.fallback_variables = [v for v in self.variables if id(v) not in covered]

  @contextlib.contextmanager
  def _recording(self):
    for tap in self.taps:
      tap.install()
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
      with self._recording():
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


def clip_factors(squared_norms: tf.Tensor, l2_norm_clip: float) -> tf.Tensor:
  """min(1, C / ||g||): scales each gradient to norm at most C."""
  norms = tf.sqrt(squared_norms)
  return tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, _NORM_EPSILON))


def per_example_clipped_sum(grads: PerExampleGradients, mask: tf.Tensor,
                            l2_norm_clip: float) -> list:
  """sum_b mask_b * clip(g_b, C) for every trainable variable."""
  factors = clip_factors(grads.squared_norms(), l2_norm_clip) * tf.cast(mask, grads.losses.dtype)
  return grads.weighted_sum(factors)


def microbatch_sums(grads: PerExampleGradients, mask: tf.Tensor, microbatch_ids: tf.Tensor,
                    num_microbatches: int):
  """Per-microbatch gradient sums [K, ...] and example counts [K] of one physical batch."""
  weights = tf.cast(mask, grads.losses.dtype)
  sums = [tf.math.unsorted_segment_sum(g * tf.reshape(weights, [-1] + [1] * (g.shape.rank - 1)),
                                       microbatch_ids, num_microbatches)
          for g in grads.materialize()]
  counts = tf.math.unsorted_segment_sum(weights, microbatch_ids, num_microbatches)
  return sums, counts


def clipped_microbatch_sum(sums: Sequence[tf.Tensor], counts: tf.Tensor,
                           l2_norm_clip: float) -> list:
  """sum_k clip(mean gradient of microbatch k, C); empty microbatches contribute nothing."""
  inverse = tf.math.divide_no_nan(tf.ones_like(counts), counts)
  means = [s * tf.reshape(inverse, [-1] + [1] * (s.shape.rank - 1)) for s in sums]
  squared = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(m), [tf.shape(m)[0], -1]), axis=1)
                      for m in means])
  factors = clip_factors(squared, l2_norm_clip)
  return [tf.tensordot(factors, m, axes=1) for m in means]


def reference_clipped_sum(model: keras.Model, loss_fn: LossFn, x, y, l2_norm_clip: float,
                          mask=None, microbatch_ids=None, num_microbatches=None) -> list:
  """The slow, obvious clipped gradient sum: one example (or microbatch) at a time, eagerly.

  Use it to check that a model's DP gradients are right. Examples with mask 0 are skipped.
  Returns numpy arrays in the order of `model.trainable_variables`.
  """
  batch = len(y)
  mask = np.ones(batch) if mask is None else np.asarray(mask)
  if num_microbatches is None:
    groups = [[b] for b in range(batch) if mask[b]]
  else:
    ids = np.asarray(microbatch_ids)
    groups = [[b for b in range(batch) if mask[b] and ids[b] == k] for k in range(num_microbatches)]
    groups = [group for group in groups if group]
  take = lambda data, rows: tf.nest.map_structure(lambda t: tf.gather(t, rows), data)
  total = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
  for rows in groups:
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(loss_fn(take(y, rows), model(take(x, rows), training=True)))
    grads = [np.asarray(tf.convert_to_tensor(g), np.float64)
             for g in tape.gradient(loss, model.trainable_variables)]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    factor = min(1.0, l2_norm_clip / max(norm, _NORM_EPSILON))
    total = [t + factor * g for t, g in zip(total, grads)]
  return total
