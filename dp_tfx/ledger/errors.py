"""What the ledger raises: one exception for every record that cannot be trusted as it is.

Whatever finds the problem (reading a file, checking a ledger history, opening a ledger for a run,
releasing a reservation), a ledger that is missing, malformed or impossible raises LedgerError, so
that whoever refuses a run on it (the DPTrainer, the PrivacyEvaluator, components/refusals.py)
needs one except clause. LedgerIntegrityError, a subclass, tells a record edited after it was
written (its content hash or signature) from one that was wrong when written.
"""


class LedgerError(ValueError):
  """The ledger is missing, malformed or describes something impossible or inconsistent."""


class LedgerIntegrityError(LedgerError):
  """The ledger's content does not match its hash: it was edited after it was written."""


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise LedgerError(message)
