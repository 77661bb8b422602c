"""A pipeline script that ends in a privacy refusal ends with one line, not a traceback.

A DPTrainer refused before training (the budget is spent, a policy no run could meet) or a
ledger that fails its checks raises dp_tfx.PolicyRefusal or dp_tfx.LedgerError, and TFX's
runners let it end the user's script. Its message already says what happened and what to do
next; forty lines of TFX and Keras frames above it only hide that. So importing
dp_tfx.components wraps `sys.excepthook`: such an error, uncaught, prints as one line
(`dp_tfx: refused: ...`, exit status 1); every other error keeps its traceback, and
DP_TFX_TRACEBACKS=1 keeps it for these too. Notebooks show errors their own way and are unchanged.
"""

from __future__ import annotations

import os
import sys

TRACEBACKS_ENV = "DP_TFX_TRACEBACKS"


def _privacy_refusal(error: BaseException):
  """The PolicyRefusal or LedgerError in `error`'s chain (a runner may wrap it), else None."""
  # Imported here: dp_tfx.components must stay light to import (dp_tfx.ledger loads numpy).
  from dp_tfx.ledger import LedgerError
  from dp_tfx.policy import PolicyRefusal

  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, (PolicyRefusal, LedgerError)):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def _one_line_hook(previous):
  def hook(kind, error, traceback):
    refusal = None if os.environ.get(TRACEBACKS_ENV) == "1" else _privacy_refusal(error)
    if refusal is None:
      previous(kind, error, traceback)
      return
    text = " ".join(line.strip() for line in str(refusal).splitlines() if line.strip())
    print(f"dp_tfx: refused: {text} (set {TRACEBACKS_ENV}=1 for the traceback)", file=sys.stderr)

  hook.dp_tfx_one_line_refusals = True
  return hook


def install() -> None:
  """Wraps sys.excepthook once (a second import leaves it as it is)."""
  if not getattr(sys.excepthook, "dp_tfx_one_line_refusals", False):
    sys.excepthook = _one_line_hook(sys.excepthook)
