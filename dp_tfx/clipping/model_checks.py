"""Which models have per-example gradients at all: none whose layers mix examples."""

from __future__ import annotations

import keras


def checked_layers(model: keras.Model) -> list:
  """Every layer of a built model (nested ones included), after checking that none of them mixes
  the examples of a batch.

  Raises:
    ValueError: for a model that is not built, or has trainable BatchNormalization layers.
  """
  if not model.built:
    raise ValueError("build the model (call it on a batch) before making it private")
  layers = list(model._flatten_layers(include_self=False, recursive=True))  # pylint: disable=protected-access
  mixing = [
    layer.name
    for layer in layers
    if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
  ]
  if mixing:
    raise ValueError(
      f"BatchNormalization layers {mixing} mix examples within a batch, so "
      "per-example gradients (and DP-SGD) are undefined; use LayerNormalization "
      "or GroupNormalization instead"
    )
  return layers
