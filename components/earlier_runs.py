"""The ledger history checked against what MLMD recorded of every earlier DPTrainer run.

A ledger history is files anyone who can write there can delete. Each DPTrainer run records in
MLMD the segments its snapshot held (ledger_records.record_ledger); a later run's snapshot and the
history hold only the files still there. So every segment recorded for any earlier run of the
pipeline must be in the history the current run counts, whatever directory it was recorded
under: a segment deleted, or left behind in another directory (a new `ledger_history_dir` for
the same pipeline), would drop that run's spending out of the total. Segments are matched by id,
so the same history reached by another path (a symlink, a rename, a copy) passes. The DPTrainer
checks before its first step (a run on a tampered history would spend for nothing) and the
PrivacyEvaluator before its verdict, both on the `earlier_privacy_ledgers()` Resolver's output.

Every record counts whatever its artifact's MLMD state: TFX resolves LIVE artifacts only, so a
ledger artifact marked DELETED (or any state but LIVE) would drop out of the check. The
Resolver's strategy reads MLMD itself for the pipeline's PrivacyLedger artifacts in every state
and puts those not LIVE back in force (LIVE again, with a warning): a run's privacy record is
never retired. Each record also names the artifact it was written for (its uri, pipeline, run and
component: ledger_records.RecordOrigin); a record on another artifact, or one record on two
artifacts, is refused: copied in MLMD, it would stand in for the record it replaced.

Under a policy that requires signatures, each earlier record must carry a valid signature
(ledger_records.verify_record), which covers its origin too: the MLMD store is a file in the
pipeline root, and an edited record could otherwise hide a deleted segment. Out of reach: whoever
can delete an earlier run's PrivacyLedger artifact from MLMD (its row, or its type, its events
and its attribution to the pipeline) together with its segment files (MLMD then knows no such
run), or holds the ledger key; and runs under another pipeline name or MLMD store (e.g. another
output dir), which see no earlier run of this one.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Set

import ml_metadata as mlmd
from absl import logging
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.types import artifact_utils, channel

from dp_tfx.components import artifacts, ledger_records
from dp_tfx.ledger import LedgerError, LedgerHistory, Segment, check_still_there

EARLIER_LEDGERS_RESOLVER_ID = "EarlierPrivacyLedgers"
EARLIER_LEDGERS_OUTPUT = "ledgers"
# What else to do when an earlier run's segment is not in the history (besides copying its file
# back, which check_still_there says), said with each refusal.
_MISSING_SEGMENT_ADVICE = (
  ", or run with the history that holds it (ledger_history_dir; dp-tfx pipeline "
  "--ledger-history); data that shares no individual with this pipeline's earlier runs needs a "
  "pipeline of its own (another pipeline name or MLMD store, e.g. another --output-dir)"
)


# MLMD's context types for a pipeline and for one of its nodes (tfx.dsl.compiler.constants).
PIPELINE_CONTEXT_TYPE = "pipeline"
NODE_CONTEXT_TYPE = "node"


class EveryArtifactStrategy(resolver.ResolverStrategy):
  """Resolves every PrivacyLedger artifact of the pipeline, in every MLMD state, oldest first (and
  an empty list when there is none).

  TFX hands a strategy the LIVE artifacts only; this one reads the others from MLMD (the
  pipeline's, see `pipelines_of`) and sets them LIVE again, which the Resolver's publication
  writes to MLMD: downstream nodes resolve LIVE artifacts only, and a ledger record must count
  whatever its state says. TFX's LatestArtifactStrategy cannot stand in: with
  desired_num_of_artifacts=n it resolves nothing unless at least n artifacts exist.

  Nothing here may raise: a Resolver that fails resolves nothing for the nodes downstream (TFX
  records a failed execution and goes on), which would then run without the check. So an MLMD
  error while reading the other states is logged and the LIVE ones are resolved alone.
  """

  def __init__(self, pipeline_name: Optional[str] = None):
    self._pipeline_name = pipeline_name

  def resolve_artifacts(
    self, store: mlmd.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
  ) -> Dict[str, List[types.Artifact]]:
    resolved = {}
    for key, found in input_dict.items():
      every = {artifact.id: artifact for artifact in found}
      try:
        pipelines = pipelines_of(store, found, self._pipeline_name)
        in_store = ledger_artifacts_in_store(store, pipelines)
      except Exception as error:  # pylint: disable=broad-except
        logging.error(
          "EarlierPrivacyLedgers: PrivacyLedger artifacts in states other than LIVE "
          "could not be read from MLMD (%r); only the LIVE ones are checked",
          error,
        )
        in_store = []
      for artifact in in_store:
        if artifact.id in every:
          continue
        state = artifact.mlmd_artifact.state
        if state != metadata_store_pb2.Artifact.LIVE:
          logging.warning(
            "PrivacyLedger artifact id %s (%s) was %s in MLMD: a run's privacy record stays in "
            "force whatever its state, so it is LIVE again and counts",
            artifact.id,
            artifact.uri,
            metadata_store_pb2.Artifact.State.Name(state),
          )
          artifact.mlmd_artifact.state = metadata_store_pb2.Artifact.LIVE
        every[artifact.id] = artifact
      resolved[key] = sorted(every.values(), key=lambda artifact: artifact.id)
    return resolved


def pipelines_of(
  store: mlmd.MetadataStore, live: Sequence[types.Artifact], pipeline_name: Optional[str] = None
) -> Optional[Set[str]]:
  """The pipelines whose PrivacyLedger artifacts the Resolver resolves: `pipeline_name` if given;
  else those of the LIVE ones TFX resolved (all of this pipeline); else, none being LIVE, every
  pipeline with this Resolver's node in MLMD (this one among them: its contexts are registered
  before it resolves); None (the whole store) if even that finds none."""
  if pipeline_name:
    return {pipeline_name}
  names = set()
  try:
    pipeline_type = store.get_context_type(PIPELINE_CONTEXT_TYPE)
    for artifact in live:
      names.update(
        context.name
        for context in store.get_contexts_by_artifact(artifact.id)
        if context.type_id == pipeline_type.id
      )
    if not names:
      suffix = "." + EARLIER_LEDGERS_RESOLVER_ID
      names.update(
        context.name[: -len(suffix)]
        for context in store.get_contexts_by_type(NODE_CONTEXT_TYPE)
        if context.name.endswith(suffix)
      )
  except mlmd_errors.NotFoundError:
    pass
  return names or None


def ledger_artifacts_in_store(
  store: mlmd.MetadataStore, pipelines: Optional[Iterable[str]] = None
) -> List[types.Artifact]:
  """Every PrivacyLedger artifact MLMD holds, in every state, oldest first: of the named pipelines
  (attributed to the pipeline's context, or in an event of one of its executions), or of the
  whole store (None)."""
  try:
    ledger_type = store.get_artifact_type(artifacts.PrivacyLedger.TYPE_NAME)
  except mlmd_errors.NotFoundError:
    return []  # no DPTrainer ever published a ledger here
  if pipelines is None:
    found = store.get_artifacts_by_type(artifacts.PrivacyLedger.TYPE_NAME)
  else:
    ids = set()
    for name in sorted(pipelines):
      try:
        context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, name)
      except mlmd_errors.NotFoundError:
        context = None
      if context is None:
        continue
      ids.update(artifact.id for artifact in store.get_artifacts_by_context(context.id))
      executions = store.get_executions_by_context(context.id)
      if executions:
        ids.update(
          event.artifact_id
          for event in store.get_events_by_execution_ids([execution.id for execution in executions])
        )
    found = store.get_artifacts_by_id(sorted(ids)) if ids else []
  return [
    artifact_utils.deserialize_artifact(ledger_type, artifact)
    for artifact in sorted(found, key=lambda artifact: artifact.id)
    if artifact.type_id == ledger_type.id
  ]


def earlier_privacy_ledgers(pipeline_name: Optional[str] = None) -> resolver.Resolver:
  """A Resolver of every PrivacyLedger artifact MLMD holds for the pipeline (any DPTrainer, any
  run, any MLMD state), from its output "ledgers": the `earlier_privacy_ledgers` of the
  DPTrainer and the PrivacyEvaluator.

  Args:
    pipeline_name: the pipeline's name. Without it the pipeline is found in MLMD (see
      `pipelines_of`); give it where one MLMD store serves several pipelines with DPTrainers.

  Local and Beam (portable) orchestrators only: the Kubeflow V2 compiler accepts no resolver
  strategy but LatestArtifactStrategy with desired_num_of_artifacts=1 and
  LatestBlessedModelStrategy, and refuses this one.
  """
  return resolver.Resolver(
    strategy_class=EveryArtifactStrategy,
    config={"pipeline_name": pipeline_name} if pipeline_name else None,
    **{EARLIER_LEDGERS_OUTPUT: channel.Channel(type=artifacts.PrivacyLedger)},
  ).with_id(EARLIER_LEDGERS_RESOLVER_ID)


def check_earlier_runs(
  earlier_ledgers: Sequence[types.Artifact],
  segments: Sequence[Segment],
  history_dir: Optional[str],
  key: Optional[bytes] = None,
  pipeline: Optional[str] = None,
  current: Optional[types.Artifact] = None,
) -> None:
  """Raises LedgerError unless every segment MLMD recorded for an earlier DPTrainer run is among
  `segments`, with the same fixed facts and at least as many noisy steps; and unless each record
  sits on the artifact it was written for, once (ledger_records.check_origin, `check_distinct`).

  Args:
    earlier_ledgers: PrivacyLedger artifacts of earlier runs (this run's may be among them).
      Those with no segment record (written before dp_tfx recorded one) are passed over with a
      warning, unless `key` is given: then every record must be signed with it.
    segments: every segment the current run counts (its ledger history now).
    history_dir: where they were read, for the messages (None: the ledger names no history).
    key: under a policy that requires signatures, the ledger key.
    pipeline: the pipeline checking, if known: a record written by another one is refused.
    current: this run's PrivacyLedger artifact, if published: no earlier record may be its.
  """
  earlier_ledgers = sorted(earlier_ledgers, key=lambda artifact: artifact.id)
  for earlier in earlier_ledgers:
    if key is not None:
      ledger_records.verify_record(earlier, key)
    ledger_records.check_origin(earlier, pipeline)
  check_distinct([*earlier_ledgers, *([current] if current is not None else [])])
  present = {segment.segment_id: segment for segment in segments}
  here = (
    f"the ledger history {history_dir}"
    if history_dir
    else "this run's ledger (it names no ledger history)"
  )
  for earlier in earlier_ledgers:
    run = f"DPTrainer run (artifact id {earlier.id})"
    recorded = ledger_records.recorded_segments(earlier)  # malformed: LedgerError
    if recorded is None:
      logging.warning(
        "PrivacyLedger artifact id %s (%s) records no segments in MLMD (written "
        "before dp_tfx recorded them): not checked against the ledger history",
        earlier.id,
        earlier.uri,
      )
      continue
    recorded_in = ledger_records.recorded_history_dir(earlier) or "none"
    for segment in recorded:
      check_still_there(
        segment.segment_id,
        segment.noisy_steps,
        present.get(segment.segment_id),
        here,
        f"{run} recorded in MLMD in the ledger history {recorded_in}",
        segment.fixed_facts_sha256,
        _MISSING_SEGMENT_ADVICE,
      )


def check_distinct(ledger_artifacts: Sequence[types.Artifact]) -> None:
  """Raises LedgerError if two PrivacyLedger artifacts hold one run's record (the same origin):
  it was copied from one onto the other in MLMD, hiding the other's own record."""
  seen: Dict[str, types.Artifact] = {}
  for artifact in sorted(ledger_artifacts, key=lambda artifact: artifact.id):
    identity = ledger_records.record_identity(artifact)  # malformed: LedgerError
    other = seen.setdefault(identity, artifact)
    if other.id != artifact.id:
      raise LedgerError(
        f"PrivacyLedger artifact ids {other.id} and {artifact.id} hold the same "
        f"record (written for {identity}): it was copied from one onto the other "
        "in MLMD, hiding the other's own record"
      )


def check_history(
  earlier_ledgers: Sequence[types.Artifact],
  history_dir: str,
  key: Optional[bytes] = None,
  pipeline: Optional[str] = None,
) -> None:
  """`check_earlier_runs` against the ledger history in `history_dir` as it is now (read with
  `key`, if given): the DPTrainer's check before it spends anything."""
  if earlier_ledgers:
    check_earlier_runs(
      earlier_ledgers, LedgerHistory(history_dir, key).read(), history_dir, key, pipeline
    )


def check_store(
  metadata_path: str, ledger_file: str, snapshot, ledger, key: Optional[bytes] = None
) -> str:
  """`dp-tfx report --metadata`: the same cross-check as the DPTrainer's and the
  PrivacyEvaluator's, against the pipeline's MLMD store (an SQLite file, opened read-only).

  The records checked are those of the pipeline whose PrivacyLedger artifact `ledger_file` is
  (any state); if it is no artifact's file, every PrivacyLedger record in the store. If it is
  one, its file must also have the content hash the DPTrainer recorded for it.

  Args:
    metadata_path: the pipeline's metadata.sqlite.
    ledger_file: the privacy_ledger.json reported on.
    snapshot: that file as loaded (dp_tfx.ledger.PrivacyLedger).
    ledger: the snapshot with its ledger history now (`with_history`): what the total counts.
    key: the ledger key, if one is set: every record must then be signed with it.

  Returns:
    What was checked, in words.

  Raises:
    LedgerError: if the check fails; ValueError if the store cannot be read.
  """
  if not os.path.isfile(metadata_path):
    raise ValueError(
      f"--metadata {metadata_path} is not a file: give the pipeline's MLMD store "
      "(OUTPUT_DIR/metadata.sqlite for dp-tfx pipeline)"
    )
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  try:
    store = mlmd.MetadataStore(config)
    everything = ledger_artifacts_in_store(store)
    directory = os.path.realpath(os.path.dirname(os.path.abspath(ledger_file)))
    own = [
      artifact
      for artifact in everything
      if "://" not in artifact.uri and os.path.realpath(artifact.uri) == directory
    ]
    pipelines = None
    if own:
      pipeline_type = store.get_context_type(PIPELINE_CONTEXT_TYPE)
      pipelines = {
        context.name
        for artifact in own
        for context in store.get_contexts_by_artifact(artifact.id)
        if context.type_id == pipeline_type.id
      } or None
    records = ledger_artifacts_in_store(store, pipelines) if pipelines else everything
  except (mlmd_errors.StatusError, RuntimeError) as error:  # RuntimeError: not an MLMD store
    raise ValueError(
      f"--metadata {metadata_path} cannot be read as an MLMD store: {str(error)[:200]}"
    ) from None
  for artifact in own:
    if key is not None:
      ledger_records.verify_record(artifact, key)
    ledger_records.check_origin(artifact)
    if not artifact.has_custom_property(ledger_records.LEDGER_HASH_PROPERTY):
      raise LedgerError(
        f"the DPTrainer recorded no content_hash for PrivacyLedger artifact id "
        f"{artifact.id} in MLMD: its file cannot be checked against what "
        "training wrote"
      )
    if artifact.get_string_custom_property(ledger_records.LEDGER_HASH_PROPERTY) != (
      snapshot.content_hash()
    ):
      raise LedgerError(
        f"the ledger file's content_hash differs from the one the DPTrainer "
        f"recorded in MLMD for PrivacyLedger artifact id {artifact.id}: the file "
        "was changed (and re-hashed) after training"
      )
  check_earlier_runs(records, ledger.segments, ledger.history_dir, key)
  not_live = sum(
    artifact.mlmd_artifact.state != metadata_store_pb2.Artifact.LIVE for artifact in records
  )
  scope = (
    f"of pipeline {', '.join(sorted(pipelines))}"
    if pipelines
    else "of every pipeline there (the ledger file is no PrivacyLedger artifact's)"
  )
  return (
    f"passed: {len(records)} DPTrainer runs recorded in {metadata_path} {scope}"
    + (f", {not_live} of them not LIVE there" if not_live else "")
    + (
      "; records signed with the ledger key"
      if key is not None
      else "; signatures not checked (no ledger key set)"
    )
  )
