"""Ledgers, audits, canaries and reports on a filesystem that is not the local disk.

TensorFlow's in-memory "ram://" filesystem stands in for gs:// (Kubeflow and Vertex keep every
artifact there): it goes through the same tf.io.gfile calls, and pathlib cannot open it.
"""

import hashlib
import os
import pathlib
import uuid

import pytest
import tensorflow as tf

from components import testing
from dp_tfx import files
from dp_tfx.audit import canaries as canaries_lib
from dp_tfx.audit.result import PrivacyAudit
from dp_tfx.ledger import LedgerError, PrivacyLedger, directory_digest
from dp_tfx.policy import PrivacyPolicy, decide
from dp_tfx.report import PLOT_FILE, REPORT_FILE, SUMMARY_FILE, write_report
from tests.dp_tfx.test_audit_result import _audit


@pytest.fixture
def remote_dir():
  return f"ram://dp_tfx_test/{uuid.uuid4().hex}"


def _ledger():
  return testing.make_ledger(dataset_size=4000, batch_size=200, noise_multiplier=1.1, steps=300)


def test_a_ledger_is_saved_flushed_continued_and_verified_on_a_remote_filesystem(remote_dir):
  path = f"{remote_dir}/history/ledger.json"
  ledger = _ledger()
  ledger.segments[-1].noisy_steps -= 1
  ledger.save(path)
  ledger.record_step()  # flushes to the same place
  loaded = PrivacyLedger.load(path)
  assert loaded.noisy_steps == 300 and loaded.content_hash() == ledger.content_hash()
  ledger.finish_segment()  # ram:// gives no modification time: only a finished run lets go
  continued = PrivacyLedger.open_for(path, 4000, "sha256:test-data")
  assert continued.noisy_steps == 300
  assert tf.io.gfile.listdir(f"{remote_dir}/history") == ["ledger.json"]  # no temporary left


def test_modification_times_come_from_the_storage_or_are_unknown(tmp_path, remote_dir):
  path = tmp_path / "a.json"
  path.write_text("{}")
  os.utime(path, (1_000_000_000, 1_000_000_000))
  assert files.modified_time(path) == 1_000_000_000  # the filesystem's, whoever wrote the file
  os.utime(path, (0, 0))
  assert files.modified_time(path) == 0  # a suspect time, not "unknown" (the ledger judges it)
  files.write_text(f"{remote_dir}/a.json", "{}")
  assert files.modified_time(f"{remote_dir}/a.json") is None  # ram:// keeps none
  with pytest.raises(FileNotFoundError):
    files.modified_time(tmp_path / "absent.json")


def test_a_missing_ledger_is_reported_as_missing(remote_dir):
  with pytest.raises(LedgerError, match="no privacy ledger at ram://"):
    PrivacyLedger.load(f"{remote_dir}/ledger.json")
  with pytest.raises(FileNotFoundError):
    files.read_text(f"{remote_dir}/ledger.json")


def _old_local_digest(root: pathlib.Path) -> str:
  """The digest as it was computed from local paths before remote filesystems were supported."""
  digest = hashlib.sha256()
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    digest.update(path.relative_to(root).as_posix().encode() + b"\0")
    digest.update(path.read_bytes())
  return "sha256:" + digest.hexdigest()


def test_model_digest_is_the_same_as_before_for_local_directories(tmp_path):
  # "a.txt" sorts before "a/b" as a string but after it by path components (pathlib's order).
  for relative, data in {"a.txt": b"1", "a/b": b"2", "saved_model.pb": b"3"}.items():
    (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / relative).write_bytes(data)
  assert directory_digest(tmp_path) == _old_local_digest(tmp_path)


def test_model_digest_of_a_remote_copy_equals_the_local_one(tmp_path, remote_dir):
  # (No file here shares a prefix with a directory: the ram:// filesystem would list "a.txt"
  # inside "a/" as ".txt"; gs:// does not.)
  tree = {
    "fingerprint.pb": b"1",
    "saved_model.pb": b"3",
    "variables/variables.index": b"4",
    "variables/variables.data-00000-of-00001": b"5",
    "assets/vocab": b"6",
  }
  for relative, data in tree.items():
    (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / relative).write_bytes(data)
    files.write_bytes(f"{remote_dir}/{relative}", data)
  assert directory_digest(remote_dir) == directory_digest(tmp_path) == _old_local_digest(tmp_path)
  files.write_bytes(f"{remote_dir}/variables/variables.index", b"changed")
  assert directory_digest(remote_dir) != directory_digest(tmp_path)


def test_audit_and_canaries_round_trip_on_a_remote_filesystem(remote_dir):
  audit = _audit()
  audit.save(remote_dir)
  assert PrivacyAudit.load(remote_dir) == audit
  fmt = canaries_lib.CanaryFormat(prefix="my pin is ", digits=4)
  made = canaries_lib.make_canaries(fmt, {1: 2, 4: 1}, seed=3)
  canaries_lib.save_canaries(f"{remote_dir}/canaries.json", fmt, made)
  assert canaries_lib.load_canaries(f"{remote_dir}/canaries.json") == (fmt, made)


def test_report_with_its_plot_is_written_to_a_remote_filesystem(remote_dir):
  ledger = _ledger()
  policy = PrivacyPolicy(max_epsilon=10.0, delta=1e-5)
  decision = decide(policy, ledger)
  write_report(remote_dir, decision, policy, ledger, ledger.epsilon_curve(1e-5, policy.accountant))
  assert b'"blessed": true' in files.read_bytes(f"{remote_dir}/{REPORT_FILE}")
  assert files.read_text(f"{remote_dir}/{SUMMARY_FILE}").startswith(decision.summary)
  assert files.read_bytes(f"{remote_dir}/{PLOT_FILE}")[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_ledger_is_refused_where_a_crash_could_lose_it():
  with pytest.raises(LedgerError, match="cannot be written on hdfs://"):
    _ledger().save("hdfs://namenode/ledgers/ledger.json")


def test_create_new_never_replaces_a_file_even_one_made_after_its_check(tmp_path, monkeypatch):
  path = tmp_path / "segment.json"
  assert files.create_new(path, b"first") == str(path)
  with pytest.raises(FileExistsError):
    files.create_new(path, b"second")
  # Another run creates the file between the check and the write: the OS still refuses.
  monkeypatch.setattr(files, "exists", lambda path: False)
  with pytest.raises(FileExistsError):
    files.create_new(path, b"third")
  assert path.read_bytes() == b"first"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["segment.json"]  # no temporary left
