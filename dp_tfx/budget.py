"""Where a data source's privacy budget lives: its ledger history under a budget root.

The budget belongs to the data, not to a directory: by default every run on a data source (a
name the user gives, or one derived from the pipeline) records its steps in one ledger history
under the budget root, `BUDGET_ROOT/<data source>/budget-<n>/`, wherever the run writes its
outputs. A new output directory, pipeline root or component id reaches the same history. The
data itself is claimed by its first data source (`claim_data`, by the records' order-independent
digest): the same examples under another name, in memory or drawn again as Poisson batches, are
refused rather than given a fresh budget.

Starting a new budget for the same data is an explicit act (`start_new_budget`, the CLI's
`dp-tfx new-budget`): it records who asked, why, and the budget it supersedes beside the new
history, whose runs then compose from zero. That is honest only when no model trained under the
superseded budget is ever released.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import re
import socket
from typing import Optional

from dp_tfx import files, record_digest
from dp_tfx.ledger import LedgerError, read_history

BUDGET_ROOT_ENV = "DP_TFX_BUDGET_ROOT"
_BUDGET = re.compile(r"budget-([1-9][0-9]*)")
_SLUG_LENGTH = 40
# Beside the data sources' folders: which data source claimed which training data (claim_data).
_CLAIMS = "data-claims"


def default_budget_root() -> str:
  """$DP_TFX_BUDGET_ROOT, else the user's state directory ($XDG_STATE_HOME or ~/.local/state)
  /dp_tfx/budgets: a place that outlives every output directory of this user's runs."""
  configured = os.environ.get(BUDGET_ROOT_ENV)
  if configured:
    return configured
  state = os.environ.get("XDG_STATE_HOME") or os.path.join(
    os.path.expanduser("~"), ".local", "state"
  )
  return os.path.join(state, "dp_tfx", "budgets")


def source_directory(budget_root: str, data_source: str) -> str:
  """The data source's folder under the budget root: a readable slug and a digest of the name
  (two names never share a folder, whatever characters they hold)."""
  if not isinstance(data_source, str) or not data_source.strip():
    raise ValueError(f"a data source needs a non-empty name; got {data_source!r}")
  slug = re.sub(r"[^A-Za-z0-9._-]+", "_", data_source).strip("._")[:_SLUG_LENGTH] or "source"
  digest = hashlib.sha256(data_source.encode("utf-8")).hexdigest()[:12]
  return os.path.join(budget_root, f"{slug}-{digest}")


def _generations(source_dir: str) -> list:
  """The budget numbers present in a source's folder, ascending."""
  if not files.is_dir(source_dir):
    return []
  numbers = {
    int(match.group(1))
    for match in (
      _BUDGET.fullmatch(name.rstrip("/").removesuffix(".json"))
      for name in files.listdir(source_dir)
    )
    if match
  }
  return sorted(numbers)


def history_dir(budget_root: str, data_source: str) -> str:
  """The ledger history of the data source's current budget (the latest one started).

  Raises:
    LedgerError: where budgets are numbered with a gap, or a budget after the first lacks the
      record of who started it: a folder made by hand must not open a fresh budget.
  """
  source_dir = source_directory(budget_root, data_source)
  generations = _generations(source_dir)
  if generations and generations != list(range(1, generations[-1] + 1)):
    raise LedgerError(
      f"the budgets of {data_source!r} in {source_dir} are numbered "
      f"{generations}, with a gap: one was removed or made by hand"
    )
  for number in generations[1:]:
    if not files.exists(os.path.join(source_dir, f"budget-{number}.json")):
      raise LedgerError(
        f"budget-{number} of {data_source!r} in {source_dir} has no record of "
        "who started it and why: only `dp-tfx new-budget` starts a budget"
      )
  return os.path.join(source_dir, f"budget-{generations[-1] if generations else 1}")


def fresh_start(history: str) -> Optional[dict]:
  """The record of who started the budget at `history` and why (None for a source's first)."""
  path = history.rstrip("/") + ".json"
  return json.loads(files.read_text(path)) if files.exists(path) else None


def start_new_budget(
  budget_root: str, data_source: str, reason: str, requested_by: Optional[str] = None
) -> str:
  """Starts a new, empty budget for the data source and returns its ledger history.

  The record beside it names who asked, why, and the budget it supersedes (its runs and steps
  stay where they are). Only honest if no model trained under the old budget is ever released.

  Raises:
    ValueError: without a reason, or if the current budget has no run (nothing to supersede).
  """
  if not isinstance(reason, str) or not reason.strip():
    raise ValueError("say why the data source needs a new budget (--reason): it is recorded")
  current = history_dir(budget_root, data_source)
  segments = read_history(current) if files.is_dir(current) else []
  if not segments:
    raise ValueError(
      f"the current budget of {data_source!r} ({current}) has no run: there is nothing to supersede"
    )
  number = int(_BUDGET.fullmatch(os.path.basename(current)).group(1)) + 1
  new = os.path.join(source_directory(budget_root, data_source), f"budget-{number}")
  record = {
    "kind": "dp_tfx new budget",
    "data_source": data_source,
    "reason": reason.strip(),
    "requested_by": requested_by or f"{getpass.getuser()}@{socket.gethostname()}",
    "requested_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "supersedes": {
      "history_dir": current,
      "runs": len({s.run_id for s in segments}),
      "noisy_steps": sum(s.noisy_steps for s in segments),
    },
  }
  # Exclusive: of two requests at once, one starts the budget and the other is refused.
  files.create_new(new + ".json", (json.dumps(record, indent=2) + "\n").encode("utf-8"))
  files.makedirs(new)
  return new


def refuse_data_budgeted_elsewhere(budget_root: str, data_source: str, fingerprint: str) -> None:
  """Refuses a run whose exact training data was already trained on under another data source
  of the budget root: a new name for the same people must not open a fresh budget.

  Raises:
    LedgerError: naming the data source (and history) whose budget the data belongs to.
  """
  own = source_directory(budget_root, data_source)
  if not files.is_dir(budget_root):
    return
  for name in sorted(files.listdir(budget_root)):
    other = os.path.join(budget_root, name.rstrip("/"))
    if other == own or name.rstrip("/") == _CLAIMS or not files.is_dir(other):
      continue
    for number in _generations(other):
      history = os.path.join(other, f"budget-{number}")
      if not files.is_dir(history):
        continue
      for segment in read_history(history):
        if segment.dataset_fingerprint == fingerprint:
          raise _budgeted_elsewhere(segment.data_source, f"ledger history {history}")


def claim_data(budget_root: str, data_source: str, data_digest: str) -> None:
  """Records that `data_source` trains on the records whose digest (dp_tfx.record_digest) is
  `data_digest`, or refuses if another data source of the budget root claimed them first.

  The digest does not depend on the records' order or files, nor on a Poisson draw (unlike the
  ledger's dataset fingerprint), so the same examples drawn again under a new name are found.
  A claim is a file named by the digest and created exclusively: of two runs at once under two
  names, one claims the data and the other is refused.

  Raises:
    LedgerError: naming the data source that claimed the data, or if its claim is unreadable.
  """
  digest = record_digest.parse(data_digest, "the training data's digest")
  path = os.path.join(budget_root, _CLAIMS, f"{digest.count}-{digest.total:064x}.json")
  claim = {
    "data_source": data_source,
    "data_digest": data_digest,
    "claimed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
  }
  try:
    files.create_new(path, (json.dumps(claim, indent=2) + "\n").encode("utf-8"))
    return
  except FileExistsError:
    pass
  try:
    owner = json.loads(files.read_text(path))["data_source"]
  except (ValueError, KeyError, TypeError) as error:
    raise LedgerError(
      f"the claim {path} on this training data is unreadable ({error}): which "
      "data source's budget the data belongs to is unknown"
    ) from error
  if owner != data_source:
    raise _budgeted_elsewhere(owner, f"claim {path}")


def _budgeted_elsewhere(data_source: str, where: str) -> LedgerError:
  return LedgerError(
    f"this training data was trained on before under the data source "
    f"{data_source!r} ({where}): its budget is that one. Give that data source "
    f"to compose with it; a new name never starts a fresh budget for the same "
    f"data"
  )
