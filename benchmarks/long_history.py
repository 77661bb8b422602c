"""How long the PrivacyEvaluator takes to judge a long ledger history: epsilon and its curve.

Builds a history of RUNS segments that all differ (each its own N, hence q, and sigma), as a data
source retrained over months on changing data would leave, and times what the evaluator computes
from it: the decision's epsilon (PLD) and the report's curve. Prints one JSON line.

    .venv/bin/python -m benchmarks.long_history --runs 50
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from dp_tfx import accounting
from dp_tfx.config import DPConfig
from dp_tfx.ledger import PrivacyLedger
from dp_tfx.plan import TrainingPlan
from dp_tfx.report import PLOT_FILE, _plot


def build_history(directory: str, runs: int, steps: int) -> PrivacyLedger:
  """`runs` finished segments in the history at `directory`, every one on other facts."""
  ledger = None
  for index in range(runs):
    size = 4000 + 37 * index
    plan = TrainingPlan.from_config(
      DPConfig(noise_multiplier=1.0 + 0.01 * index, batch_size=64, steps=steps, delta=1e-5), size
    )
    ledger = PrivacyLedger.open_history(directory, size, f"sha256:{size}")
    ledger.start_segment(plan)
    ledger.current_segment.noisy_steps = steps
    ledger.finish_segment()
  return PrivacyLedger.open_history(directory, 4000, "sha256:judged")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=50)
  parser.add_argument("--steps", type=int, default=200, help="noisy steps per run")
  parser.add_argument("--delta", type=float, default=1e-5)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as directory:
    ledger = build_history(directory, args.runs, args.steps)
    started = time.perf_counter()
    decision = ledger.epsilon_result(args.delta, accounting.PLD)
    decided = time.perf_counter()
    curve = ledger.epsilon_curve(args.delta, accounting.PLD)
    curved = time.perf_counter()
    _plot(f"{directory}/{PLOT_FILE}", curve, None)
    plotted = time.perf_counter()
    rdp = ledger.epsilon_result(args.delta, accounting.RDP)
  print(
    json.dumps(
      {
        "runs": args.runs,
        "steps_per_run": args.steps,
        "noisy_steps": ledger.noisy_steps,
        "delta": args.delta,
        "epsilon_pld": decision.epsilon,
        "epsilon_rdp": rdp.epsilon,
        "curve_last_epsilon": curve[-1][1],
        "curve_points": len(curve),
        "decision_seconds": round(decided - started, 2),
        "curve_seconds": round(curved - decided, 2),
        "plot_seconds": round(plotted - curved, 2),
        "total_seconds": round(plotted - started, 2),
      }
    )
  )


if __name__ == "__main__":
  main()
