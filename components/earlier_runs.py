"""The ledger history checked against what MLMD recorded of every earlier DPTrainer run.

A ledger history is files anyone who can write there can delete. Each DPTrainer run records in
MLMD the segments its snapshot held (artifacts.record_ledger); a later run's snapshot and the
history hold only the files still there. So every segment recorded for any earlier run of the
pipeline must be in the history the current run counts, whatever directory it was recorded
under: a segment deleted, or left behind in another directory (a new `ledger_history_dir` for
the same pipeline), would drop that run's spending out of the total. Segments are matched by id,
so the same history reached by another path (a symlink, a rename, a copy) passes. The DPTrainer
checks before its first step (a run on a tampered history would spend for nothing) and the
PrivacyEvaluator before its verdict, both on the `earlier_privacy_ledgers()` Resolver's output.

Under a policy that requires signatures, each earlier record must carry a valid signature
(artifacts.verify_record): the MLMD store is a file in the pipeline root too, and an edited
record could otherwise hide a deleted segment. Out of reach: whoever can delete an earlier run's
PrivacyLedger artifact from MLMD together with its segment files (MLMD then knows no such run),
or holds the ledger key; and runs under another pipeline name or MLMD store (e.g. another output
dir), which see no earlier run of this one.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import ml_metadata as mlmd
from absl import logging
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.types import channel

from dp_tfx.components import artifacts
from dp_tfx.ledger import LedgerError, LedgerHistory, Segment

EARLIER_LEDGERS_RESOLVER_ID = "EarlierPrivacyLedgers"
EARLIER_LEDGERS_OUTPUT = "ledgers"
# What to do when an earlier run's segment is not in the history, said with each refusal.
_MISSING_SEGMENT_ADVICE = (
    "copy its segment file back into the history, or run with the history that holds it "
    "(ledger_history_dir; dp-tfx pipeline --ledger-history); data that shares no individual with "
    "this pipeline's earlier runs needs a pipeline of its own (another pipeline name or MLMD "
    "store, e.g. another --output-dir)")
_CHANGED_SEGMENT_ADVICE = "restore the segment file as that run wrote it (e.g. from a backup)"


class EveryArtifactStrategy(resolver.ResolverStrategy):
  """Resolves every artifact of each channel, oldest first (and an empty list when there is none).

  TFX's LatestArtifactStrategy cannot stand in: with desired_num_of_artifacts=n it resolves
  nothing unless at least n artifacts exist.
  """

  def resolve_artifacts(self, store: mlmd.MetadataStore,
                        input_dict: Dict[str, List[types.Artifact]]
                        ) -> Dict[str, List[types.Artifact]]:
    del store  # the artifacts were queried already
    return {key: sorted(found, key=lambda artifact: artifact.id)
            for key, found in input_dict.items()}


def earlier_privacy_ledgers() -> resolver.Resolver:
  """A Resolver of every PrivacyLedger artifact MLMD holds for the pipeline (any DPTrainer, any
  run), from its output "ledgers": the `earlier_privacy_ledgers` of the DPTrainer and the
  PrivacyEvaluator.

  Local and Beam (portable) orchestrators only: the Kubeflow V2 compiler accepts no resolver
  strategy but LatestArtifactStrategy with desired_num_of_artifacts=1 and
  LatestBlessedModelStrategy, and refuses this one.
  """
  return resolver.Resolver(
      strategy_class=EveryArtifactStrategy,
      **{EARLIER_LEDGERS_OUTPUT: channel.Channel(type=artifacts.PrivacyLedger)},
  ).with_id(EARLIER_LEDGERS_RESOLVER_ID)


def check_earlier_runs(earlier_ledgers: Sequence[types.Artifact], segments: Sequence[Segment],
                       history_dir: Optional[str], key: Optional[bytes] = None) -> None:
  """Raises LedgerError unless every segment MLMD recorded for an earlier DPTrainer run is among
  `segments`, with the same fixed facts and at least as many noisy steps.

  Args:
    earlier_ledgers: PrivacyLedger artifacts of earlier runs (this run's may be among them).
      Those with no segment record (written before dp_tfx recorded one) are passed over with a
      warning, unless `key` is given: then every record must be signed with it.
    segments: every segment the current run counts (its ledger history now).
    history_dir: where they were read, for the messages (None: the ledger names no history).
    key: under a policy that requires signatures, the ledger key.
  """
  current = {segment.segment_id: segment for segment in segments}
  here = (f"the ledger history {history_dir}" if history_dir else
          "this run's ledger (it names no ledger history)")
  for earlier in sorted(earlier_ledgers, key=lambda artifact: artifact.id):
    run = f"DPTrainer run (artifact id {earlier.id})"
    if key is not None:
      artifacts.verify_record(earlier, key)
    recorded = artifacts.recorded_segments(earlier)  # malformed: LedgerError
    if recorded is None:
      logging.warning("PrivacyLedger artifact id %s (%s) records no segments in MLMD (written "
                      "before dp_tfx recorded them): not checked against the ledger history",
                      earlier.id, earlier.uri)
      continue
    recorded_in = artifacts.recorded_history_dir(earlier) or "none"
    for segment in recorded:
      now = current.get(segment.segment_id)
      if now is None:
        raise LedgerError(f"segment {segment.segment_id}, recorded in MLMD by {run} in the "
                          f"ledger history {recorded_in}, is missing from {here}: that run's "
                          f"spending would drop out of the total; {_MISSING_SEGMENT_ADVICE}")
      if artifacts.fixed_facts_hash(now) != segment.fixed_facts_sha256:
        raise LedgerError(f"segment {segment.segment_id} in {here} differs from the facts {run} "
                          f"recorded for it in MLMD: it was changed; {_CHANGED_SEGMENT_ADVICE}")
      if now.noisy_steps < segment.noisy_steps:
        raise LedgerError(f"segment {segment.segment_id} in {here} records {now.noisy_steps} "
                          f"noisy steps, fewer than the {segment.noisy_steps} {run} recorded in "
                          f"MLMD: it was shortened; {_CHANGED_SEGMENT_ADVICE}")


def check_history(earlier_ledgers: Sequence[types.Artifact], history_dir: str,
                  key: Optional[bytes] = None) -> None:
  """`check_earlier_runs` against the ledger history in `history_dir` as it is now (read with
  `key`, if given): the DPTrainer's check before it spends anything."""
  if earlier_ledgers:
    check_earlier_runs(earlier_ledgers, LedgerHistory(history_dir, key).read(), history_dir, key)
