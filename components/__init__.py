"""TFX components for DP training (installed as dp_tfx.components), imported the TFX way:

    from dp_tfx.components import DPTrainer, PrivacyEvaluator, Pusher

Names load on first use (as in dp_tfx), so importing one submodule does not build every component.
A privacy refusal that ends the user's script prints as one line (see `refusals`).
"""

import importlib

from dp_tfx.components import refusals

refusals.install()

_EXPORTS = {
  "DPTrainer": "dp_tfx.components.dp_trainer.component",
  "PoissonBatchGen": "dp_tfx.components.poisson_batch_gen.component",
  "PrivacyAuditor": "dp_tfx.components.privacy_auditor.component",
  "PrivacyEvaluator": "dp_tfx.components.privacy_evaluator.component",
  "Pusher": "dp_tfx.components.pusher.component",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'dp_tfx.components' has no attribute {name!r}")
