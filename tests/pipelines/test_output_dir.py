"""`dp-tfx pipeline --output-dir X` refuses an X it cannot write with one line and exit 2, before
any data is written or anything trains (runner._check_output_dir): X under /proc, X or its parent
a regular file, X not writable, the data's budget (under --budget-root) a file or not writable.

No test here trains: the DAG runners are replaced by a stand-in that fails the test if reached.
"""

import os

import pytest

from dp_tfx.pipelines import cli
from dp_tfx.pipelines import runner

ARGS = ["--epochs", "1", "--data-limit", "200", "--no-audit"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_WRITES_ANYWHERE = pytest.mark.skipif(
  IS_ROOT, reason="root writes into a chmod 555 directory; the /proc variants cover it as root"
)
NEEDS_PROC = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")


@pytest.fixture(autouse=True)
def _nothing_runs(monkeypatch):
  from tfx import v1 as tfx
  from tfx.orchestration.beam import beam_dag_runner

  def reached(*_):
    raise AssertionError("the pipeline started: the output dir was not refused beforehand")

  monkeypatch.setattr(tfx.orchestration.LocalDagRunner, "run", reached)
  monkeypatch.setattr(beam_dag_runner.BeamDagRunner, "run", reached)


def _refused(capsys, output_dir, named, runner_name="local", extra=()):
  """Runs the command; asserts exit 2, one stderr line naming `named`, nothing on stdout."""
  assert (
    cli.main(["pipeline", "--output-dir", str(output_dir), "--runner", runner_name, *ARGS, *extra])
    == 2
  )
  out, err = capsys.readouterr()
  assert out == ""
  lines = err.splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("dp-tfx pipeline: error: ") and str(named) in lines[0], lines[0]
  return lines[0]


def _nothing_trained(output_dir):
  for name in ("pipeline_root", "metadata.sqlite", "data", "serving_model"):
    assert not os.path.lexists(os.path.join(output_dir, name)), name


@NEEDS_PROC
def test_a_dir_under_proc(capsys):
  _refused(capsys, "/proc/dp_tfx_test", "/proc/dp_tfx_test")
  assert not os.path.exists("/proc/dp_tfx_test")


@NEEDS_PROC
def test_proc_itself_exists_but_is_not_writable_even_for_root(capsys):
  _refused(capsys, "/proc", "/proc")
  _nothing_trained("/proc")


def test_a_dir_whose_parent_is_a_file(tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  output_dir = tmp_path.resolve() / "file" / "out"
  line = _refused(capsys, output_dir, tmp_path.resolve() / "file")
  assert "not a directory" in line
  assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("runner_name", ["local", "kubeflow"])
def test_a_regular_file(tmp_path, capsys, runner_name):
  output_dir = tmp_path.resolve() / "out"
  output_dir.write_text("x")
  line = _refused(capsys, output_dir, output_dir, runner_name)
  assert "output directory" in line and "not a directory" in line
  assert output_dir.read_text() == "x"


@ROOT_WRITES_ANYWHERE
def test_an_existing_dir_that_is_not_writable(tmp_path, capsys):
  output_dir = tmp_path.resolve() / "out"
  output_dir.mkdir()
  output_dir.chmod(0o555)
  try:
    line = _refused(capsys, output_dir, output_dir)
    assert "Permission denied" in line
    assert list(output_dir.iterdir()) == []
  finally:
    output_dir.chmod(0o755)


def _budget_root(tmp_path):
  root = tmp_path.resolve() / "budgets"
  return root, ["--budget-root", str(root)]


def test_a_budget_root_that_is_a_file(tmp_path, capsys):
  output_dir = tmp_path.resolve() / "out"
  root, extra = _budget_root(tmp_path)
  root.write_text("x")
  line = _refused(capsys, output_dir, root, extra=extra)
  assert "ledger history" in line and "not a directory" in line
  assert line.endswith("choose another --budget-root")
  _nothing_trained(output_dir)
  assert root.read_text() == "x"


@NEEDS_PROC
def test_a_budget_root_that_is_not_writable_even_for_root(tmp_path, capsys):
  output_dir = tmp_path.resolve() / "out"
  root, extra = _budget_root(tmp_path)
  root.symlink_to("/proc")  # a directory nobody can create files in
  line = _refused(capsys, output_dir, "/proc/", extra=extra)  # the link resolved
  assert line.endswith("choose another --budget-root")
  _nothing_trained(output_dir)


@ROOT_WRITES_ANYWHERE
def test_a_budget_root_that_is_not_writable(tmp_path, capsys):
  output_dir = tmp_path.resolve() / "out"
  root, extra = _budget_root(tmp_path)
  root.mkdir()
  root.chmod(0o555)
  try:
    line = _refused(capsys, output_dir, root, extra=extra)
    assert "Permission denied" in line
    _nothing_trained(output_dir)
  finally:
    root.chmod(0o755)


@pytest.mark.parametrize("extra", [[], ["--budget-root", "budgets"]], ids=["none", "local"])
def test_a_kubeflow_pipeline_without_a_shared_budget_root_is_refused(tmp_path, capsys, extra):
  line = _refused(capsys, tmp_path / "out", "--budget-root", runner_name="kubeflow", extra=extra)
  assert "containers cannot see this machine's disk, nor its budgets" in line


@pytest.mark.parametrize("runner_name, made", [("local", ["budgets"]), ("kubeflow", [])])
def test_a_writable_dir_passes_and_keeps_no_probe(tmp_path, runner_name, made):
  output_dir = tmp_path / "new" / "out"
  budget_root = str(tmp_path / "budgets") if runner_name == "local" else "gs://team/budgets"
  runner._check_output_dir(
    runner.PipelineOptions(
      output_dir=str(output_dir),
      dp_config=None,
      privacy_policy=None,
      runner=runner_name,
      budget_root=budget_root,
    )
  )
  assert os.listdir(output_dir) == []
  assert sorted(os.listdir(tmp_path)) == sorted(["new", *made])
  if made:
    (source,) = (tmp_path / "budgets").iterdir()
    assert [p.name for p in source.iterdir()] == ["budget-1"]
    assert list((source / "budget-1").iterdir()) == []


def test_an_unwritable_ledger_history_is_refused_naming_its_option(tmp_path, capsys):
  history = tmp_path / "budget"
  history.write_text("a file, not a directory")
  assert (
    cli.main(
      ["pipeline", "--output-dir", str(tmp_path / "out"), "--ledger-history", str(history), *ARGS]
    )
    == 2
  )
  _, err = capsys.readouterr()
  (line,) = err.splitlines()
  assert str(history) in line and line.endswith("choose another --ledger-history")


def test_an_in_memory_ledger_history_is_refused(tmp_path, capsys):
  assert (
    cli.main(
      ["pipeline", "--output-dir", str(tmp_path / "out"), "--ledger-history", "ram://budget", *ARGS]
    )
    == 2
  )
  (line,) = capsys.readouterr().err.splitlines()
  assert "ram://budget is in TensorFlow's in-memory filesystem" in line
