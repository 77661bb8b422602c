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

The package: `base` (the tap and the registry: `register_tap`), one module per layer family
(`linear`: Dense and convolutions, `embedding`, `einsum_dense`, `layer_normalization`), `gradients`
(GradientTaps assembles taps and fallback), `aggregation` (clipping and sums), `model_checks`
(models that have no per-example gradients), `reference` (the slow loop).
"""

# The built-in taps register themselves for their layer classes on import.
from dp_tfx.clipping import (  # noqa: F401
  einsum_dense,
  embedding,
  layer_normalization,
  linear,
  recurrent,
)
from dp_tfx.clipping.aggregation import (
  clip_factors,
  clipped_microbatch_sum,
  clipped_sum_and_kept,
  microbatch_sums,
  per_example_clipped_sum,
)
from dp_tfx.clipping.base import LayerTap, TapOptions, register_tap
from dp_tfx.clipping.gradients import GradientTaps, LossFn, PerExampleGradients, zero_rows
from dp_tfx.clipping.reference import reference_clipped_sum

__all__ = [
  "GradientTaps",
  "LayerTap",
  "LossFn",
  "PerExampleGradients",
  "TapOptions",
  "clip_factors",
  "clipped_microbatch_sum",
  "clipped_sum_and_kept",
  "microbatch_sums",
  "per_example_clipped_sum",
  "reference_clipped_sum",
  "register_tap",
  "zero_rows",
]
