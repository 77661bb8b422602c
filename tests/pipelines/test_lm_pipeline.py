"""The DP character-LM pipeline end to end on a small slice: canaries, control, audit, push."""

import json
import pathlib

import pytest

from dp_tfx import cli
from dp_tfx.ledger import SEQUENCE


@pytest.mark.slow
def test_lm_pipeline_reports_the_audit_for_the_dp_model_and_the_control(tmp_path, capsys):
  # 600 training sequences + 42 canary copies, batch 100, 1 epoch: 6 noisy steps.
  assert cli.main(["pipeline", "--example", "lm", "--output-dir", str(tmp_path),
                   "--data-limit", "600", "--batch-size", "100", "--epochs", "1",
                   "--max-epsilon", "8", "--control", "--json"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["example"] == "lm" and result["pushed"], result["verdict"]
  audit = result["audit"]
  for measured in (audit, audit["control"]):
    # Exposure of canaries inserted 1, 4 and 16 times, and of never-inserted references (0).
    assert set(measured["canary_exposure"]) == {"0", "1", "4", "16"}
    assert all(0 <= bits <= 5 * 3.3220 for bits in measured["canary_exposure"].values())
    assert measured["empirical_epsilon_lower_bound"] >= 0
    assert 1 < measured["held_out_metrics"]["bits_per_character"] < 8
  # Six noisy steps with sigma 1: the attack proves nothing beyond the ledger's epsilon.
  assert audit["empirical_epsilon_lower_bound"] <= result["epsilon"]
  report = json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
  assert report["ledger"]["privacy_unit"] == SEQUENCE
  assert report["audit"]["canary_format"] == {"prefix": "my pin is ", "digits": 5}
  assert {c["method"] for c in report["audit"]["canaries"]} == {"exact"}
  # The 42 canary copies are kept out of the membership attack (600 - 67 eval... members only).
  assert report["audit"]["counts"]["positives"] + report["audit"]["threshold_selection_counts"][
      "positives"] <= 600
  assert (pathlib.Path(result["report_dir"]) / "exposure.png").stat().st_size > 1000
