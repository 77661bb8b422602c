"""The earlier-ledgers Resolver's strategy on a real MLMD store: every state, this pipeline's."""

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils

from dp_tfx.components import artifacts, earlier_runs

LIVE = metadata_store_pb2.Artifact.LIVE
DELETED = metadata_store_pb2.Artifact.DELETED


def _store(tmp_path):
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
  return metadata_store.MetadataStore(config)


def _two_pipelines(store):
  """Pipelines p1 and p2, each with the Resolver's node context, and ledger artifacts: p1's "a"
  DELETED and "c" LIVE, p2's "b" DELETED. Returns their ids by name."""
  ledger_type = store.put_artifact_type(
    metadata_store_pb2.ArtifactType(name=artifacts.PrivacyLedger.TYPE_NAME)
  )
  pipeline_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline"))
  node_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
  contexts = {}
  for name in ("p1", "p2"):
    contexts[name], _ = store.put_contexts(
      [
        metadata_store_pb2.Context(type_id=pipeline_type, name=name),
        metadata_store_pb2.Context(
          type_id=node_type, name=f"{name}.{earlier_runs.EARLIER_LEDGERS_RESOLVER_ID}"
        ),
      ]
    )
  ids = {}
  for name, pipeline, state in (("a", "p1", DELETED), ("b", "p2", DELETED), ("c", "p1", LIVE)):
    (ids[name],) = store.put_artifacts(
      [metadata_store_pb2.Artifact(type_id=ledger_type, uri=f"/root/{name}", state=state)]
    )
    store.put_attributions_and_associations(
      [metadata_store_pb2.Attribution(context_id=contexts[pipeline], artifact_id=ids[name])], []
    )
  return ids


def _live_ledgers(store, *ids):
  (ledger_type,) = [
    t for t in store.get_artifact_types() if t.name == artifacts.PrivacyLedger.TYPE_NAME
  ]
  return [
    artifact_utils.deserialize_artifact(ledger_type, artifact)
    for artifact in store.get_artifacts_by_id(ids)
  ]


def _resolve(store, live, **config):
  strategy = earlier_runs.EveryArtifactStrategy(**config)
  return strategy.resolve_artifacts(store, {"ledgers": live})["ledgers"]


def test_the_pipelines_ledgers_in_every_state_are_resolved_and_put_back_in_force(tmp_path):
  store = _store(tmp_path)
  ids = _two_pipelines(store)
  # TFX hands the strategy p1's LIVE ledger "c": p1's DELETED "a" is added, set LIVE; p2's not.
  resolved = _resolve(store, _live_ledgers(store, ids["c"]))
  assert [a.id for a in resolved] == [ids["a"], ids["c"]]
  assert {a.mlmd_artifact.state for a in resolved} == {LIVE}


def test_with_no_live_ledger_the_pipeline_is_found_by_the_resolvers_node(tmp_path):
  store = _store(tmp_path)
  ids = _two_pipelines(store)
  # Every ledger hidden: by name, this pipeline's; unnamed, with two pipelines' Resolver nodes in
  # the store, both (a refusal over a wrong pipeline's record fails closed, a miss would not).
  assert [a.id for a in _resolve(store, [], pipeline_name="p2")] == [ids["b"]]
  assert [a.id for a in _resolve(store, [])] == [ids["a"], ids["b"], ids["c"]]


def test_an_empty_store_resolves_nothing(tmp_path):
  assert _resolve(_store(tmp_path), []) == []
