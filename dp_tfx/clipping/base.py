"""The tap: what records one layer's inputs and pre-activations in the forward pass and turns
their output gradients into per-example norms and sums; and the registry of taps by layer class.

A layer kind gets the fast path by a LayerTap subclass registered for its class
(`register_tap(keras.layers.Dense, DenseTap)`); layers of other classes (subclasses included,
which may change the maths) take the vectorised fallback in `gradients.GradientTaps`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Dict, List, Optional, Type

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TapOptions:
  """What a tap may use, decided once per model (see gradients.GradientTaps).

  Attributes:
    grouped_convolutions: small-patch convolutions may take their per-example kernel gradients
      from one grouped convolution (where this process's kernels compute them).
    static_shapes: only operations XLA compiles, with shapes known when it compiles.
  """

  grouped_convolutions: bool = False
  static_shapes: bool = False


def flatten_positions(tensor: tf.Tensor, last_dim: int) -> tf.Tensor:
  """[B, ..., last_dim] -> [B, T, last_dim] where T is the product of the middle axes.

  T stays static when the middle axes are, even with a dynamic batch (Poisson batches without
  XLA): the choice between ghost norms and per-example gradients depends on it.
  """
  per_example = tensor.shape[1:]
  positions = per_example.num_elements() // last_dim if per_example.is_fully_defined() else -1
  return tf.reshape(tensor, [tf.shape(tensor)[0], positions, last_dim])


class LayerTap(abc.ABC):
  """Records one layer's inputs and pre-activations; turns output gradients into per-example facts.

  To give a layer class the fast path, subclass and `register_tap(LayerClass, YourTap)`:
  `kernel` (and `bias`, if not the layer's `bias`) name the variables the tap covers; `forward`
  is the layer's own maths, appending (inputs, ..., pre-activation output) to `self.records`
  (the last item is what gradients are taken of; a shared layer records once per call);
  `prepare` turns the records and their output gradients into what `squared_norms`,
  `weighted_sum` and `per_example` take. Check it against `reference_clipped_sum`.
  """

  def __init__(self, layer: keras.layers.Layer):
    self.layer = layer
    self.records: List[tuple] = []

  @property
  def variables(self) -> list:
    return [v for v in (self.kernel(), self.bias()) if v is not None]

  @abc.abstractmethod
  def kernel(self):
    """The layer's main weight variable."""

  def bias(self):
    return self.layer.bias if getattr(self.layer, "use_bias", False) else None

  @abc.abstractmethod
  def forward(self, inputs, *args, **kwargs):
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

  @classmethod
  def for_layer(cls, layer: keras.layers.Layer, options: "TapOptions") -> Optional["LayerTap"]:
    """This tap for `layer`, or None when the layer is configured in a way the tap does not
    handle (it then takes the vectorised fallback). Override to look at the configuration."""
    del options
    return cls(layer)

  def norm_method(self, prepared) -> str:
    """How `squared_norms` computes from `prepared`: "ghost" (Gram matrices, never building a
    per-example gradient) or "per_example" (from the built per-example gradients)."""
    del prepared
    return "per_example"

  # The layer method `forward` stands in for while installed.
  PATCHED_METHOD = "call"

  def install(self, watch: Callable[[tf.Tensor], None]):
    """Makes the layer's calls go through `forward` (recording) until `uninstall`; `watch` is
    the gradient tape's, for taps that take gradients of tensors of their own (probes)."""
    # An instance attribute shadows the class's method; Keras looks it up per call.
    self.layer.__dict__[self.PATCHED_METHOD] = self.forward
    self.watch = watch
    self.records = []

  def uninstall(self):
    self.layer.__dict__.pop(self.PATCHED_METHOD, None)

  def _record_and_activate(self, inputs, z, bias):
    """Adds the bias, records (inputs, pre-activation) and applies the layer's activation."""
    if bias is not None:
      z = keras.ops.add(z, bias)
    self.records.append((inputs, z))
    activation = getattr(self.layer, "activation", None)
    return activation(z) if activation is not None else z

  def outputs(self) -> List[tf.Tensor]:
    return [record[-1] for record in self.records]


def sum_per_example(prepared, fn) -> list:
  """Sums fn(inputs, grads) -> [parts] over the recorded calls of a (possibly shared) layer."""
  totals = None
  for inputs, grads in prepared:
    parts = fn(inputs, grads)
    totals = parts if totals is None else [t + p for t, p in zip(totals, parts)]
  return totals


def squared_norms_of(per_example: list) -> tf.Tensor:
  return tf.add_n(
    [tf.reduce_sum(tf.reshape(tf.square(p), [tf.shape(p)[0], -1]), axis=1) for p in per_example]
  )


def bias_reduction(output_rank: int, bias_shape, output_shape):
  """Axes of a [B, ...] output gradient to sum (keepdims) so it takes the broadcast bias's shape."""
  leading = output_rank - 1 - len(bias_shape)
  aligned = [
    a
    for a, (b, o) in enumerate(zip(bias_shape, output_shape[1 + leading :]), start=1 + leading)
    if b == 1 and o != 1
  ]
  return list(range(1, 1 + leading)), aligned


_TAPS: Dict[type, Type[LayerTap]] = {}


def register_tap(layer_class: type, tap_class: Type[LayerTap]) -> None:
  """Makes `tap_class` compute the per-example gradients of layers of exactly `layer_class`."""
  if not (isinstance(tap_class, type) and issubclass(tap_class, LayerTap)):
    raise TypeError(f"tap_class must be a LayerTap subclass; got {tap_class!r}")
  _TAPS[layer_class] = tap_class


def tap_for(layer: keras.layers.Layer, options: TapOptions) -> Optional[LayerTap]:
  """The registered tap for a layer, or None when it must use the generic fallback."""
  if not layer.trainable or not layer.trainable_variables:
    return None
  if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
    return None
  tap_class = _TAPS.get(type(layer))
  return tap_class.for_layer(layer, options) if tap_class is not None else None
