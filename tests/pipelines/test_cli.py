"""The dp-tfx command line: figures, JSON output, exit status 2 with a one-line reason."""

import functools
import json
import math
import subprocess
import sys

import pytest

from dp_tfx import accounting
from dp_tfx.pipelines import cli
from dp_tfx.config import DPConfig
from dp_tfx.ledger import PrivacyLedger
from dp_tfx.plan import TrainingPlan

EPSILON_ARGS = [
  "epsilon",
  "--n",
  "60000",
  "--batch-size",
  "256",
  "--noise-multiplier",
  "1.1",
  "--epochs",
  "60",
  "--delta",
  "1e-5",
  "--json",
]


def _run_json(capsys, args):
  assert cli.main(args) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("accountant, expected", [("pld", 2.382), ("rdp", 2.597)])
def test_epsilon_reproduces_the_reference(capsys, accountant, expected):
  result = _run_json(capsys, EPSILON_ARGS + ["--accountant", accountant])
  assert result["steps"] == 14062
  assert result["epsilon"] == pytest.approx(expected, rel=0.01)


def test_microbatches_double_the_sensitivity(capsys):
  per_example = _run_json(capsys, EPSILON_ARGS)["epsilon"]
  microbatched = _run_json(capsys, EPSILON_ARGS + ["--num-microbatches", "32"])["epsilon"]
  assert microbatched > 2 * per_example


def test_calibrate_returns_sigma_meeting_the_target(capsys):
  result = _run_json(
    capsys,
    [
      "calibrate",
      "--n",
      "60000",
      "--batch-size",
      "256",
      "--steps",
      "3515",
      "--delta",
      "1e-5",
      "--target-epsilon",
      "0.864",
      "--json",
      "--accountant",
      "rdp",
    ],
  )
  assert result["epsilon"] <= 0.864
  assert result["noise_multiplier"] == pytest.approx(1.41, rel=0.05)


@pytest.mark.parametrize(
  "args",
  [
    [
      "epsilon",
      "--n",
      "100",
      "--batch-size",
      "10",
      "--noise-multiplier",
      "-1",
      "--steps",
      "5",
      "--delta",
      "1e-5",
    ],
    ["epsilon", "--n", "100", "--batch-size", "10", "--noise-multiplier", "1", "--delta", "1e-5"],
    [
      "epsilon",
      "--n",
      "10",
      "--batch-size",
      "100",
      "--noise-multiplier",
      "1",
      "--steps",
      "5",
      "--delta",
      "1e-5",
    ],
    [
      "calibrate",
      "--n",
      "100",
      "--batch-size",
      "10",
      "--steps",
      "5",
      "--delta",
      "2",
      "--target-epsilon",
      "1",
    ],
  ],
)
def test_bad_arguments_exit_2_with_one_line(args):
  completed = subprocess.run(
    [sys.executable, "-m", "dp_tfx.pipelines.cli", *args],
    capture_output=True,
    text=True,
    check=False,
  )
  assert completed.returncode == 2
  lines = completed.stderr.strip().splitlines()
  assert len(lines) == 1 and "error" in lines[0]


def test_report_verifies_the_ledger(tmp_path, capsys):
  plan = TrainingPlan.from_config(DPConfig(noise_multiplier=1.3, batch_size=256, epochs=15), 60000)
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:x")
  ledger.save(tmp_path / "ledger.json")
  ledger.start_segment(plan)
  for _ in range(plan.steps):
    ledger.segments[-1].noisy_steps += 1
  ledger.flush()
  result = _run_json(capsys, ["report", str(tmp_path / "ledger.json"), "--delta", "1e-5", "--json"])
  assert result["epsilon"] == pytest.approx(0.864, rel=0.01) and result["rigorous"]
  (tmp_path / "ledger.json").write_text(
    (tmp_path / "ledger.json")
    .read_text()
    .replace('"noise_multiplier": 1.3', '"noise_multiplier": 9.0')
  )
  assert cli.main(["report", str(tmp_path / "ledger.json")]) == 2
  assert "content_hash" in capsys.readouterr().err


# --- issue 12: microbatching, numbers the accountants cannot handle, valid JSON, file errors ---

SMALL = ["--n", "4000", "--batch-size", "200", "--epochs", "2", "--delta", "1e-5"]


def _strict_json(text):
  """json.loads that refuses Infinity and NaN, which are not JSON."""

  def refuse(name):
    raise ValueError(f"not JSON: {name}")

  return json.loads(text, parse_constant=refuse)


def _exit_2_one_line(capsys, args, *words):
  try:
    status = cli.main(args)
  except SystemExit as exit_:  # argparse errors
    status = exit_.code
  captured = capsys.readouterr()
  assert status == 2 and not captured.out
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and "error" in lines[0], captured.err
  for word in words:
    assert word in lines[0]
  return lines[0]


@pytest.mark.parametrize("num_microbatches", [2, 3, 99, 100, 101, 199, 200])
def test_any_number_of_microbatches_above_one_is_accounted_with_2c(capsys, num_microbatches):
  # Even K = B (microbatches of expected size one example): sensitivity 2C, not C.
  microbatched = _run_json(
    capsys,
    [
      "epsilon",
      *SMALL,
      "--noise-multiplier",
      "1.1",
      "--json",
      "--num-microbatches",
      str(num_microbatches),
    ],
  )
  assert microbatched["sensitivity"] == "2C"
  assert microbatched["num_microbatches"] == num_microbatches
  assert microbatched["epsilon"] == pytest.approx(_small_epsilon(0.55), rel=1e-9)
  assert microbatched["epsilon"] > 4 * _small_epsilon(1.1)  # 10.2 against 2.0


@functools.lru_cache(maxsize=None)
def _small_epsilon(sigma):
  """epsilon of SMALL per example, straight from dp_accounting."""
  return accounting.compute_epsilon(
    sampling_rate=200 / 4000, noise_multiplier=sigma, steps=40, delta=1e-5
  )


def test_one_microbatch_is_per_example(capsys):
  per_example = _run_json(
    capsys, ["epsilon", *SMALL, "--noise-multiplier", "1.1", "--json", "--num-microbatches", "1"]
  )
  assert per_example["sensitivity"] == "C" and per_example["num_microbatches"] is None
  assert per_example["epsilon"] == pytest.approx(_small_epsilon(1.1), rel=1e-9)


def test_epsilon_matches_the_training_plan(capsys):
  result = _run_json(
    capsys, ["epsilon", *SMALL, "--noise-multiplier", "1.1", "--json", "--num-microbatches", "2"]
  )
  plan = TrainingPlan.from_config(
    DPConfig(noise_multiplier=1.1, batch_size=200, epochs=2, delta=1e-5, num_microbatches=2), 4000
  )
  assert result["epsilon"] == plan.epsilon() and result["steps"] == plan.steps == 40


def test_calibrate_with_microbatches_uses_2c(capsys):
  args = ["calibrate", *SMALL, "--target-epsilon", "2", "--accountant", "rdp", "--json"]
  per_example = _run_json(capsys, args)
  microbatched = _run_json(capsys, args + ["--num-microbatches", "2"])
  assert microbatched["noise_multiplier"] == pytest.approx(
    2 * per_example["noise_multiplier"], rel=1e-3
  )
  assert microbatched["epsilon"] <= 2


@pytest.mark.parametrize(
  "num_microbatches, word", [("0", "--num-microbatches"), ("3", "num_microbatches")]
)  # > B = 2
def test_impossible_microbatches_are_refused(capsys, num_microbatches, word):
  _exit_2_one_line(
    capsys,
    [
      "epsilon",
      "--n",
      "100",
      "--batch-size",
      "2",
      "--steps",
      "5",
      "--delta",
      "1e-5",
      "--noise-multiplier",
      "1",
      "--num-microbatches",
      num_microbatches,
    ],
    word,
  )


@pytest.mark.parametrize(
  "flags, word",
  [
    (["--noise-multiplier", "1e-300", "--epochs", "2"], "--noise-multiplier"),
    (["--noise-multiplier", "1e308", "--epochs", "2"], "--noise-multiplier"),
    (["--noise-multiplier", "0.01", "--epochs", "2"], "--noise-multiplier"),
    (["--noise-multiplier", "nan", "--epochs", "2"], "--noise-multiplier"),
    (["--noise-multiplier", "1.1", "--epochs", "1e300"], "--epochs"),
    (["--noise-multiplier", "1.1", "--epochs", "inf"], "--epochs"),
    (["--noise-multiplier", "1.1", "--steps", "99999999999999999999"], "--steps"),
    (["--noise-multiplier", "1.1", "--steps", "10000001"], "--steps"),
    (["--noise-multiplier", "1.1", "--epochs", "1000000"], "epochs"),  # 2e7 steps: the plan
  ],
)
def test_numbers_the_accountants_cannot_handle_exit_2_with_one_line(capsys, flags, word):
  _exit_2_one_line(
    capsys, ["epsilon", "--n", "4000", "--batch-size", "200", "--delta", "1e-5", *flags], word
  )


@pytest.mark.parametrize(
  "target, words",
  [("1e308", ("too large", "achievable")), ("1e-9", ("not reachable", "achievable"))],
)
@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibrate_outside_the_achievable_range_exits_2_with_one_line(
  capsys, target, words, accountant
):
  _exit_2_one_line(
    capsys, ["calibrate", *SMALL, "--target-epsilon", target, "--accountant", accountant], *words
  )


@pytest.mark.parametrize("sigma, reason", [("0", "not private"), ("0.05", "RDP bounds epsilon")])
def test_infinite_epsilon_is_valid_json_null_with_the_reason(capsys, sigma, reason):
  assert cli.main(["epsilon", *SMALL, "--noise-multiplier", sigma, "--json"]) == 0
  result = _strict_json(capsys.readouterr().out)
  assert result["epsilon"] is None and result["epsilon_infinite"] is True
  assert reason in result["epsilon_reason"]
  assert cli.main(["epsilon", *SMALL, "--noise-multiplier", sigma]) == 0  # text: says inf
  text = capsys.readouterr().out
  assert "epsilon: inf" in text and reason in text


def test_finite_epsilon_json_says_so(capsys):
  result = _run_json(capsys, ["epsilon", *SMALL, "--noise-multiplier", "1.1", "--json"])
  assert result["epsilon_infinite"] is False and result["epsilon_reason"] is None


def test_report_judges_the_whole_ledger_history_like_the_evaluator(tmp_path, capsys):
  # Three runs on one history (N 60000, then 4000 twice); the first run's snapshot alone says
  # less than was spent, and its own N would give a looser delta.
  history = tmp_path / "history"
  snapshots = []
  for size in (60000, 4000, 4000):
    ledger = PrivacyLedger.open_history(history, size, f"sha256:{size}")
    plan = TrainingPlan.from_config(DPConfig(noise_multiplier=1.1, batch_size=200, steps=40), size)
    ledger.start_segment(plan)
    for _ in range(plan.steps):
      ledger.record_step()
    snapshots.append(ledger.save(tmp_path / f"snapshot-{len(snapshots)}.json"))
  result = _run_json(capsys, ["report", snapshots[0], "--accountant", "rdp", "--json"])
  total = PrivacyLedger.load(snapshots[2])
  assert result["noisy_steps"] == 120 and result["runs"] == 3
  assert result["delta"] == pytest.approx(1 / 60000)
  assert result["epsilon"] == pytest.approx(total.epsilon(1 / 60000, "rdp"), rel=1e-9)
  assert result["epsilon"] > PrivacyLedger.load(snapshots[0]).epsilon(1 / 60000, "rdp")


def test_json_output_never_holds_infinity_or_nan(capsys):
  cli._print(
    {
      "epsilon": math.inf,
      "nested": {"a": -math.inf, "b": math.nan, "c": [math.inf, 1.0]},
      "epsilon_infinite": True,
      "epsilon_reason": "why",
    },
    as_json=True,
  )
  result = _strict_json(capsys.readouterr().out)
  assert result == {
    "epsilon": None,
    "epsilon_infinite": True,
    "epsilon_reason": "why",
    "nested": {"a": None, "a_infinite": True, "b": None, "c": [None, 1.0]},
  }


def test_report_of_a_ledger_with_infinite_epsilon_is_valid_json(tmp_path, capsys):
  plan = TrainingPlan.from_config(DPConfig(noise_multiplier=0.0, batch_size=256, steps=10), 60000)
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:x")
  ledger.save(tmp_path / "ledger.json")
  ledger.start_segment(plan)
  ledger.segments[-1].noisy_steps += 10
  ledger.flush()
  assert cli.main(["report", str(tmp_path / "ledger.json"), "--delta", "1e-5", "--json"]) == 0
  result = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["epsilon"] is None and result["epsilon_infinite"] is True
  assert "not private" in result["epsilon_reason"]


@pytest.mark.parametrize(
  "error",
  [
    PermissionError(13, "Permission denied", "/output/privacy_ledgers"),
    NotADirectoryError(20, "Not a directory", "/tmp/file/dir"),
    OSError(30, "Read-only file system"),
  ],
)
def test_os_errors_exit_2_with_one_line(monkeypatch, capsys, error):
  def fail(args):
    raise error

  monkeypatch.setitem(cli._HANDLERS, "report", fail)
  line = _exit_2_one_line(capsys, ["report", "ledger.json"])
  assert type(error).__name__ in line and error.strerror in line


def test_tensorflow_filesystem_errors_exit_2_with_one_line(monkeypatch, capsys):
  tf = pytest.importorskip("tensorflow")

  def fail(args):
    raise tf.errors.FailedPreconditionError(None, None, "/tmp/file is not a directory\nmore")

  monkeypatch.setitem(cli._HANDLERS, "report", fail)
  line = _exit_2_one_line(
    capsys, ["report", "ledger.json"], "FailedPreconditionError", "not a directory"
  )

  def bug(args):
    raise tf.errors.InvalidArgumentError(None, None, "shapes do not match")

  monkeypatch.setitem(cli._HANDLERS, "report", bug)
  with pytest.raises(tf.errors.InvalidArgumentError):  # not a file error: keeps its traceback
    cli.main(["report", "ledger.json"])
  assert line


def test_a_missing_ledger_exits_2_with_one_line(tmp_path, capsys):
  _exit_2_one_line(capsys, ["report", str(tmp_path / "missing.json")])


# --- signed MLMD records: `pipeline --require-signature`, `report --metadata` ---


@pytest.fixture
def no_ledger_key(monkeypatch):
  from dp_tfx import signing

  monkeypatch.delenv(signing.KEY_ENV, raising=False)
  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)
  return monkeypatch


def _pipeline_policy(monkeypatch, args):
  """The PrivacyPolicy `dp-tfx pipeline ARGS` would run under.

  runner.run is replaced by one that records its options.
  """
  from dp_tfx.pipelines import runner

  seen = {}

  def run(options):
    seen["policy"] = options.privacy_policy
    return {"verdict": "recorded"}

  monkeypatch.setattr(runner, "run", run)
  assert cli.main(["pipeline", *args]) == 0
  return seen["policy"]


def test_pipeline_json_is_all_of_stdout(monkeypatch, capsys):
  # Keras printed its epoch lines to stdout before the JSON object: `| jq` failed.
  from dp_tfx.pipelines import runner

  def run(options):
    print("Epoch 1/1 - 3s - loss: 2.3")
    return {"verdict": "printed by the run", "epsilon": 1.5}

  monkeypatch.setattr(runner, "run", run)
  assert cli.main(["pipeline", "--json", "--output-dir", "unused"]) == 0
  captured = capsys.readouterr()
  assert json.loads(captured.out) == {"verdict": "printed by the run", "epsilon": 1.5}
  assert "Epoch 1/1" in captured.err


def test_pipeline_requires_signatures_whenever_a_ledger_key_is_set(no_ledger_key, capsys):
  from dp_tfx import signing

  assert not _pipeline_policy(no_ledger_key, []).require_signature
  no_ledger_key.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  assert _pipeline_policy(no_ledger_key, []).require_signature  # signed, so verified
  assert _pipeline_policy(no_ledger_key, ["--require-signature"]).require_signature
  assert not _pipeline_policy(no_ledger_key, ["--no-require-signature"]).require_signature


def test_pipeline_require_signature_without_a_key_exits_2_with_one_line(
  no_ledger_key, capsys, tmp_path
):
  _exit_2_one_line(
    capsys,
    ["pipeline", "--require-signature", "--output-dir", str(tmp_path)],
    "--require-signature needs the ledger key",
  )
  assert not any(tmp_path.iterdir())  # nothing written
  # A Kubeflow pipeline is only compiled here: the key is needed where its steps run.
  assert _pipeline_policy(
    no_ledger_key, ["--require-signature", "--runner", "kubeflow"]
  ).require_signature


def test_report_says_the_mlmd_cross_check_was_not_run_without_the_store(tmp_path, capsys):
  ledger = PrivacyLedger(dataset_size=60000, dataset_fingerprint="sha256:x")
  ledger.save(tmp_path / "ledger.json")
  result = _run_json(capsys, ["report", str(tmp_path / "ledger.json"), "--json"])
  assert result["mlmd_cross_check"].startswith("not run (give --metadata PATH")
  _exit_2_one_line(
    capsys,
    ["report", str(tmp_path / "ledger.json"), "--metadata", str(tmp_path / "missing.sqlite")],
    "is not a file",
  )
  (tmp_path / "not-a-store.sqlite").write_text("not SQLite")
  _exit_2_one_line(
    capsys,
    ["report", str(tmp_path / "ledger.json"), "--metadata", str(tmp_path / "not-a-store.sqlite")],
    "cannot be read",
  )


def test_new_budget_starts_an_empty_history_recording_who_and_why(tmp_path, capsys):
  from dp_tfx import budget

  root = str(tmp_path / "budgets")
  args = ["new-budget", "--data-source", "mnist:embedded", "--budget-root", root]
  _exit_2_one_line(capsys, args + ["--reason", "none yet"], "has no run")
  current = budget.history_dir(root, "mnist:embedded")
  plan = TrainingPlan.from_config(DPConfig(noise_multiplier=1.0, batch_size=10, steps=4), 100)
  ledger = PrivacyLedger.open_history(current, 100, "sha256:digits", data_source="mnist:embedded")
  ledger.start_segment(plan)
  for _ in range(4):
    ledger.record_step()
  ledger.finish_segment()
  result = _run_json(capsys, args + ["--reason", "every earlier model was deleted", "--json"])
  assert result["ledger_history"] == budget.history_dir(root, "mnist:embedded") != current
  assert result["reason"] == "every earlier model was deleted" and "@" in result["requested_by"]
  assert result["supersedes"] == {"history_dir": current, "runs": 1, "noisy_steps": 4}
