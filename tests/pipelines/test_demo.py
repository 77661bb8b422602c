"""The demo job end to end: DP training on the embedded MNIST digits learns, with a finite ε."""

import math

import pytest

from dp_tfx.pipelines import cli, demo
from dp_tfx.ledger import PrivacyLedger


@pytest.mark.slow
def test_demo_learns_with_a_finite_epsilon(tmp_path):
  result = demo.run(epochs=3, output_dir=tmp_path, verbose=0, seed=7)
  # Chance is 10%; three DP epochs of the tutorial CNN on 4,000 digits reach ~80%.
  assert result["accuracy"] > 0.6
  assert math.isfinite(result["epsilon"]) and 0 < result["epsilon"] < 10
  ledger = PrivacyLedger.load(result["ledger"])
  assert ledger.noisy_steps == result["noisy_steps"] == 60  # floor(3 * 4000 / 200)
  assert result["epsilon"] == pytest.approx(ledger.epsilon(demo.DEMO_DELTA))
  assert (tmp_path / "model" / "saved_model.pb").exists()
  assert cli.main(["report", result["ledger"], "--delta", "1e-5"]) == 0
