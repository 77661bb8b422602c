"""Training on several workers (tf.distribute.MultiWorkerMirroredStrategy): who writes, and what
every worker must share before a DP step.

Every worker runs the same `fit`. Only the chief writes the ledger: it counts each step before
the step runs, and no worker can finish a step without the chief (the gradients are summed
across every replica of every worker), so each step any worker takes is counted exactly once.
The workers must sample the same logical batches and add independent noise: the chief's key and
first step go to every worker, and if a worker's plan or data differ from the chief's (another
ledger, other data, another config) every worker stops before the first step. The chief's own
refusals (a policy, a used batch) stop every worker too, instead of leaving them waiting in a
step the chief never joins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional

import numpy as np
import tensorflow as tf

from dp_tfx.plan import TrainingPlan


class WorkersDisagreeError(RuntimeError):
  """The workers of one training run do not share the chief's plan, or the chief stopped."""


def several(strategy: tf.distribute.Strategy) -> bool:
  """Whether `strategy` trains on several workers (processes) at once."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  return strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (no public equivalent)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the ledger and the model: on several workers only the chief
  (the "chief" task, else worker 0); otherwise always."""
  return not several(strategy) or strategy.extended.should_checkpoint


def start_together(
  strategy: tf.distribute.Strategy,
  plan: Optional[TrainingPlan],
  fingerprint: str,
  first_step: int,
  key: np.ndarray,
  run_facts: Optional[dict] = None,
  failed: bool = False,
) -> tuple:
  """(first step, key) as the chief has them, on every worker, once every worker's plan,
  training data fingerprint and `run_facts` (a dict of ints and strings: how batches are cut,
  the epochs asked for...) are the chief's. A collective: every worker must call it, and one
  that `failed` to prepare (it raises its own error after this call) calls it too.

  Raises:
    WorkersDisagreeError: on every other worker, if a worker failed, or if a worker's plan, data
      or run facts differ from the chief's.
  """
  if not several(strategy):
    return first_step, key
  facts = 0
  if plan is not None:  # JSON writes floats exactly (shortest round-trip form): equal iff equal
    facts = _hash63(
      json.dumps(
        {"plan": dataclasses.asdict(plan), "data": fingerprint, "run": run_facts or {}},
        sort_keys=True,
      )
    )
  mine = np.array([first_step, *np.asarray(key, np.int64), facts], np.int64)
  chiefs = _from_chief(strategy, mine)
  failures = _count(strategy, failed)
  disagreeing = _count(strategy, not np.array_equal(chiefs[3:], mine[3:]))
  if failed:
    return first_step, key  # the caller raises its own error
  if failures:
    raise WorkersDisagreeError(
      f"{failures} replica(s) stopped before the first step (see the chief's and the workers' logs)"
    )
  if disagreeing:
    raise WorkersDisagreeError(
      f"{disagreeing} replica(s) have another plan, other training data or other run facts "
      f"than the chief (this worker's plan: {plan}; {run_facts}). Every worker must get the "
      "same config, data, fit arguments, compile settings, policy and versions, and the same "
      "ledger storage (read by the chief and the workers alike)"
    )
  return int(chiefs[0]), chiefs[1:3]


def all_ready(strategy: tf.distribute.Strategy, ready: bool, facts: str = "") -> None:
  """A collective after the chief's last checks: raises WorkersDisagreeError on every worker
  where any worker is not `ready`, or has other `facts` than the chief (e.g. the weights it
  restored)."""
  if not several(strategy):
    return
  if _count(strategy, not ready):
    raise WorkersDisagreeError(
      "a worker stopped before the first step (see the chief's and the workers' logs)"
    )
  chiefs = _from_chief(strategy, np.array([_hash63(facts)], np.int64))
  if _count(strategy, int(chiefs[0]) != _hash63(facts)):
    raise WorkersDisagreeError(
      f"a worker starts from other weights than the chief (this one: "
      f"{facts or 'fresh'}): checkpoints must be on storage every "
      "worker reads"
    )


def _hash63(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def _summed(strategy: tf.distribute.Strategy, contribution) -> np.ndarray:
  """sum over every replica of every worker of contribution(global replica id)."""
  per_replica = strategy.run(
    lambda: contribution(tf.distribute.get_replica_context().replica_id_in_sync_group)
  )
  return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()


def _from_chief(strategy: tf.distribute.Strategy, values: np.ndarray) -> np.ndarray:
  """The chief's `values` on every worker: only the chief's first replica contributes to a sum."""
  chief = is_chief(strategy)
  own = tf.constant(values)

  def contribution(replica_id):
    first = tf.logical_and(tf.constant(chief), tf.equal(replica_id, 0))
    return tf.where(first, own, tf.zeros_like(own))

  return _summed(strategy, contribution)


def _count(strategy: tf.distribute.Strategy, flag: bool) -> int:
  """How many replicas (of every worker) have `flag` set."""
  value = tf.constant(int(flag), tf.int64)
  return int(_summed(strategy, lambda replica_id: value))
