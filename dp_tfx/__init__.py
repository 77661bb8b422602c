"""dp_tfx: differentially private training (DP-SGD) for Keras 3 and TFX.

The public entry points: `DPConfig` (what to train), `make_private` (a Keras model that trains
with DP-SGD), `PrivacyLedger` (what training did) and `dp_tfx.accounting` (epsilon from facts).
"""

from dp_tfx.config import DPConfig
from dp_tfx.keras import DPModel, PrivacyBudgetExhaustedError, make_private
from dp_tfx.ledger import LedgerError, LedgerIntegrityError, PrivacyLedger
from dp_tfx.plan import TrainingPlan
from dp_tfx.version import __version__

__all__ = ["DPConfig", "DPModel", "LedgerError", "LedgerIntegrityError", "PrivacyBudgetExhaustedError",
           "PrivacyLedger", "TrainingPlan", "make_private", "__version__"]
