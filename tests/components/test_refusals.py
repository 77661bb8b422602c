"""A user's pipeline script that ends in a privacy refusal ends with one line (what happened
and what to do next), exit status 1; any other error keeps its traceback."""

import os
import subprocess
import sys

import pytest

_SCRIPT = """
import dp_tfx.components
from dp_tfx.policy import PolicyRefusal
from dp_tfx.ledger import LedgerError

kind = {kind!r}
if kind == "refusal":
  raise PolicyRefusal("refused before training, nothing was spent: epsilon 6.9 exceeds 5.\\n"
                      "What you can do: train fewer steps")
if kind == "wrapped":  # as a runner may re-raise it
  try:
    raise LedgerError("the ledger history lacks segment s-1")
  except LedgerError as error:
    raise RuntimeError("component DPTrainer failed") from error
raise KeyError("a bug")
"""


def _run(kind, **environment):
  return subprocess.run(
    [sys.executable, "-c", _SCRIPT.format(kind=kind)],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, **environment},
  )


@pytest.mark.parametrize(
  "kind, line",
  [
    (
      "refusal",
      "dp_tfx: refused: refused before training, nothing was spent: epsilon 6.9 "
      "exceeds 5. What you can do: train fewer steps (set DP_TFX_TRACEBACKS=1 for the traceback)",
    ),
    (
      "wrapped",
      "dp_tfx: refused: the ledger history lacks segment s-1 (set DP_TFX_TRACEBACKS=1 "
      "for the traceback)",
    ),
  ],
)
def test_a_privacy_refusal_ends_the_script_with_one_line(kind, line):
  result = _run(kind)
  assert result.returncode == 1
  assert result.stderr.splitlines() == [line]


def test_other_errors_and_asked_for_tracebacks_keep_them():
  bug = _run("bug")
  assert bug.returncode == 1 and "Traceback (most recent call last)" in bug.stderr
  assert "KeyError: 'a bug'" in bug.stderr
  asked = _run("refusal", DP_TFX_TRACEBACKS="1")
  assert asked.returncode == 1 and "Traceback (most recent call last)" in asked.stderr
  assert "PolicyRefusal: refused before training" in asked.stderr
