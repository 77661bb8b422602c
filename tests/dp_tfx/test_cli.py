"""The dp-tfx command line: figures, JSON output, exit status 2 with a one-line reason."""

import json
import subprocess
import sys

import pytest

from dp_tfx import cli
from dp_tfx.config import DPConfig
from dp_tfx.ledger import PrivacyLedger
from dp_tfx.plan import TrainingPlan

EPSILON_ARGS = ["epsilon", "--n", "60000", "--batch-size", "256", "--noise-multiplier", "1.1",
                "--epochs", "60", "--delta", "1e-5", "--json"]


def _run_json(capsys, args):
  assert cli.main(args) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("accountant, expected", [("pld", 2.382), ("rdp", 2.597)])
def test_epsilon_reproduces_the_reference(capsys, accountant, expected):
  result = _run_json(capsys, EPSILON_ARGS + ["--accountant", accountant])
  assert result["steps"] == 14062
  assert result["epsilon"] == pytest.approx(expected, rel=0.01)


def test_microbatch_size_doubles_the_sensitivity(capsys):
  per_example = _run_json(capsys, EPSILON_ARGS)["epsilon"]
  microbatched = _run_json(capsys, EPSILON_ARGS + ["--microbatch-size", "8"])["epsilon"]
  assert microbatched > 2 * per_example


def test_calibrate_returns_sigma_meeting_the_target(capsys):
  result = _run_json(capsys, ["calibrate", "--n", "60000", "--batch-size", "256", "--steps", "3515",
                              "--delta", "1e-5", "--target-epsilon", "0.864", "--json",
                              "--accountant", "rdp"])
  assert result["epsilon"] <= 0.864
  assert result["noise_multiplier"] == pytest.approx(1.41, rel=0.05)


@pytest.mark.parametrize("args", [
    ["epsilon", "--n", "100", "--batch-size", "10", "--noise-multiplier", "-1", "--steps", "5",
     "--delta", "1e-5"],
    ["epsilon", "--n", "100", "--batch-size", "10", "--noise-multiplier", "1", "--delta", "1e-5"],
    ["epsilon", "--n", "10", "--batch-size", "100", "--noise-multiplier", "1", "--steps", "5",
     "--delta", "1e-5"],
    ["calibrate", "--n", "100", "--batch-size", "10", "--steps", "5", "--delta", "2",
     "--target-epsilon", "1"],
])
def test_bad_arguments_exit_2_with_one_line(args):
  completed = subprocess.run([sys.executable, "-m", "dp_tfx.cli", *args], capture_output=True,
                             text=True, check=False)
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
  result = _run_json(capsys, ["report", str(tmp_path / "ledger.json"), "--delta", "1e-5",
                              "--json"])
  assert result["epsilon"] == pytest.approx(0.864, rel=0.01) and result["rigorous"]
  (tmp_path / "ledger.json").write_text(
      (tmp_path / "ledger.json").read_text().replace('"noise_multiplier": 1.3',
                                                     '"noise_multiplier": 9.0'))
  assert cli.main(["report", str(tmp_path / "ledger.json")]) == 2
  assert "content_hash" in capsys.readouterr().err
