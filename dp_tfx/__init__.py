"""dp_tfx: differentially private training (DP-SGD) for Keras 3 and TFX.

The public entry points: `DPConfig` (what to train), `make_private` (a Keras model that trains
with DP-SGD), `PrivacyLedger` (what training did) and `dp_tfx.accounting` (epsilon from facts).
Names are imported on first use, so `dp-tfx epsilon` and the accounting never load TensorFlow.
"""

import importlib

from dp_tfx.version import __version__

_EXPORTS = {
  "DPConfig": "dp_tfx.config",
  "TrainingPlan": "dp_tfx.plan",
  "PrivacyLedger": "dp_tfx.ledger",
  "LedgerError": "dp_tfx.ledger",
  "LedgerIntegrityError": "dp_tfx.ledger",
  "DPModel": "dp_tfx.keras",
  "PrivacyBudgetExhaustedError": "dp_tfx.keras",
  "make_private": "dp_tfx.keras",
  "PrivacyPolicy": "dp_tfx.policy",
  "PolicyRefusal": "dp_tfx.policy",
  "StepCheckpoint": "dp_tfx.resume",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'dp_tfx' has no attribute {name!r}")
