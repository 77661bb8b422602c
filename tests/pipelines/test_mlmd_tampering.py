"""The pipeline's MLMD store (metadata.sqlite) edited by whoever can also delete segment files.

Two signed runs of the MNIST pipeline (a ledger key set, a policy that requires signatures); each
test edits a copy of their output dir the way an attacker did and runs again. Before these fixes:
a record copied onto another artifact, or ledger artifacts marked DELETED, hid a deleted segment
and the next run PUSHED at a lower epsilon; `dp-tfx pipeline` never verified the signed records;
`dp-tfx report` never looked at MLMD.
"""

import json
import pathlib
import shutil

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from dp_tfx import signing
from dp_tfx.components import artifacts, ledger_records
from dp_tfx.config import DPConfig
from dp_tfx.ledger import LEDGER_FILE_NAME, LedgerError
from dp_tfx.pipelines import cli, runner
from dp_tfx.policy import PrivacyPolicy

KEY = "a-ledger-key-of-32-bytes-or-more"
# 200 digits, batch 50, 2 epochs: 8 noisy steps a run; no audit (it plays no part here).
CONFIG = DPConfig(noise_multiplier=1.1, batch_size=50, epochs=2, delta=1e-5)
SMALL = dict(
  data_limit=200, audit=False, hyperparameters={"learning_rate": 0.5, "jit_compile": False}
)
CLI_SMALL = [
  "pipeline",
  "--no-audit",
  "--data-limit",
  "200",
  "--batch-size",
  "50",
  "--epochs",
  "2",
  "--noise-multiplier",
  "1.1",
  "--learning-rate",
  "0.5",
  "--delta",
  "1e-5",
]
SIGNED_POLICY = PrivacyPolicy(max_epsilon=100.0, delta=1e-5, require_signature=True)


def _history(output_dir) -> str:
  """The output dir's own ledger history: the copies the tests tamper with carry it along."""
  return str(pathlib.Path(output_dir) / "privacy_ledgers")


def _run(output_dir, policy=SIGNED_POLICY):
  return runner.run(
    runner.PipelineOptions(
      output_dir=str(output_dir),
      dp_config=CONFIG,
      privacy_policy=policy,
      ledger_history_dir=_history(output_dir),
      **SMALL,
    )
  )


def _store(output_dir):
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = str(pathlib.Path(output_dir) / "metadata.sqlite")
  return metadata_store.MetadataStore(config)


def _ledger_artifacts(store):
  return sorted(
    store.get_artifacts_by_type(artifacts.PrivacyLedger.TYPE_NAME), key=lambda artifact: artifact.id
  )


def _recorded_segment_ids(artifact):
  text = artifact.custom_properties[ledger_records.LEDGER_SEGMENTS_PROPERTY].string_value
  return [entry["segment_id"] for entry in json.loads(text)]


def _own_segment_id(artifact, earlier=()):
  """The segment the artifact's run wrote (the one its record adds to the earlier runs')."""
  (own,) = [s for s in _recorded_segment_ids(artifact) if s not in set(earlier)]
  return own


@pytest.fixture
def key_set(monkeypatch):
  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)
  monkeypatch.setenv(signing.KEY_ENV, KEY)


@pytest.fixture(scope="module")
def two_signed_runs(tmp_path_factory):
  """An output dir after two pushed runs, every record signed: 16 noisy steps in its history."""
  output_dir = tmp_path_factory.mktemp("two-signed-runs")
  with pytest.MonkeyPatch.context() as patch:
    patch.delenv(signing.KEY_FILE_ENV, raising=False)
    patch.setenv(signing.KEY_ENV, KEY)
    for _ in range(2):
      assert _run(output_dir)["pushed"]
  return output_dir


@pytest.fixture
def copy_of_two_runs(two_signed_runs, tmp_path):
  """A copy to tamper with (MLMD's uris still name the original's artifacts, which are kept)."""
  target = tmp_path / "out"
  shutil.copytree(two_signed_runs, target)
  return target


def _first_record_copied_onto_the_second(store):
  """The first ledger artifact's record (signature and all) copied onto the second's properties
  (not yet saved): (first, second, the id of the second run's own segment)."""
  first, second = _ledger_artifacts(store)
  deleted = _own_segment_id(second, _recorded_segment_ids(first))
  for name, value in first.custom_properties.items():
    if name.startswith("ledger_") or name == ledger_records.LEDGER_HASH_PROPERTY:
      second.custom_properties[name].CopyFrom(value)
  return first, second, deleted


@pytest.mark.slow
def test_a_record_copied_onto_a_later_runs_artifact_is_refused(copy_of_two_runs, key_set):
  # The second run's record replaced by the first run's, signature and all, and the second run's
  # segment deleted: the record agrees with the history, and its signature is genuine.
  store = _store(copy_of_two_runs)
  first, second, deleted = _first_record_copied_onto_the_second(store)
  store.put_artifacts([second])
  (copy_of_two_runs / "privacy_ledgers" / f"{deleted}.json").unlink()
  with pytest.raises(LedgerError, match=f"artifact id {second.id}.* another artifact"):
    _run(copy_of_two_runs)
  # Refused before training: no third model.
  assert len(store.get_artifacts_by_type("Model")) == 2


@pytest.mark.slow
def test_the_same_record_on_two_artifacts_is_refused(copy_of_two_runs, key_set):
  # The copy made to look like its own: the second artifact's uri set to the first's too.
  store = _store(copy_of_two_runs)
  first, second, deleted = _first_record_copied_onto_the_second(store)
  second.uri = first.uri
  store.put_artifacts([second])
  (copy_of_two_runs / "privacy_ledgers" / f"{deleted}.json").unlink()
  with pytest.raises(
    LedgerError, match=f"artifact ids {first.id} and {second.id}.* the same record"
  ):
    _run(copy_of_two_runs)


@pytest.mark.slow
def test_ledger_artifacts_marked_deleted_still_count(copy_of_two_runs, key_set):
  # Every ledger artifact marked DELETED in MLMD, every segment file deleted: TFX resolves LIVE
  # artifacts only, so the history looked like a first run's.
  store = _store(copy_of_two_runs)
  ledgers = _ledger_artifacts(store)
  for artifact in ledgers:
    artifact.state = metadata_store_pb2.Artifact.DELETED
  store.put_artifacts(ledgers)
  for segment in (copy_of_two_runs / "privacy_ledgers").glob("segment-*.json"):
    segment.unlink()
  with pytest.raises(
    LedgerError,
    match=r"segment segment-.*, which DPTrainer run "
    rf"\(artifact id {ledgers[0].id}\) recorded in MLMD.* is missing from the ledger history",
  ):
    _run(copy_of_two_runs)
  assert len(store.get_artifacts_by_type("Model")) == 2  # nothing trained
  # The resolver put them back in force (a PrivacyLedger's record is never retired).
  assert {a.state for a in _ledger_artifacts(store)} == {metadata_store_pb2.Artifact.LIVE}


@pytest.mark.slow
def test_dp_tfx_pipeline_verifies_signed_records_whenever_a_ledger_key_is_set(
  copy_of_two_runs, key_set, capsys
):
  # The second run's record emptied in MLMD and its segment deleted; `dp-tfx pipeline` with the
  # key set and no flag: the signature is verified, the run refused before training.
  store = _store(copy_of_two_runs)
  first, second = _ledger_artifacts(store)
  deleted = _own_segment_id(second, _recorded_segment_ids(first))
  second.custom_properties[ledger_records.LEDGER_SEGMENTS_PROPERTY].string_value = "[]"
  store.put_artifacts([second])
  (copy_of_two_runs / "privacy_ledgers" / f"{deleted}.json").unlink()
  status = cli.main(
    [
      *CLI_SMALL,
      "--output-dir",
      str(copy_of_two_runs),
      "--ledger-history",
      _history(copy_of_two_runs),
      "--max-epsilon",
      "100",
      "--json",
    ]
  )
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert status == 2 and lines, captured.out[-2000:]
  assert f"PrivacyLedger artifact id {second.id} does not match its signature" in lines[-1]
  assert lines[-1].startswith("dp-tfx pipeline: error:")
  assert len(store.get_artifacts_by_type("Model")) == 2


@pytest.mark.slow
def test_dp_tfx_report_runs_the_mlmd_cross_check_when_given_the_store(
  copy_of_two_runs, key_set, capsys
):
  store = _store(copy_of_two_runs)
  first, second = _ledger_artifacts(store)
  deleted = _own_segment_id(second, _recorded_segment_ids(first))
  # The first run's snapshot (in the original dir), which knows nothing of the second run.
  snapshot = pathlib.Path(first.uri) / LEDGER_FILE_NAME
  report = ["report", str(snapshot), "--json"]

  assert cli.main(report) == 0
  intact = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert intact["noisy_steps"] == 16
  assert intact["mlmd_cross_check"].startswith("not run")
  assert cli.main([*report, "--metadata", str(copy_of_two_runs / "metadata.sqlite")]) == 0
  checked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert checked["mlmd_cross_check"].startswith("passed: 2 DPTrainer runs")

  # The history is the one the snapshot names, the original's: the second run's segment goes.
  history = pathlib.Path(intact["history"])
  moved = history.parent / "moved-away.json"
  (history / f"{deleted}.json").rename(moved)
  try:
    assert cli.main(report) == 0  # the files alone cannot tell: a lower total ...
    lowered = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert lowered["noisy_steps"] == 8 and lowered["epsilon"] < intact["epsilon"]
    assert "not run (give --metadata" in lowered["mlmd_cross_check"]
    status = cli.main([*report, "--metadata", str(copy_of_two_runs / "metadata.sqlite")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1  # ... MLMD can
    assert (
      f"segment {deleted}, which DPTrainer run (artifact id {second.id}) recorded in MLMD"
      in (lines[0])
    )
  finally:
    moved.rename(history / f"{deleted}.json")
