"""A training run reduced to its ledger, for tests of concurrent runs in separate processes.

    python -m tests.dp_tfx.ledger_worker HISTORY N STEPS WORKDIR NAME

Opens the ledger history (as a run does before training), says so (WORKDIR/NAME.ready), waits for
WORKDIR/go, then records STEPS steps, each before it "runs" it; a step that ran is a line in
WORKDIR/NAME.ran. A run killed mid-way has thus recorded every step that ran, at worst one more.
"""

import os
import pathlib
import sys
import time

from dp_tfx.config import DPConfig
from dp_tfx.ledger import PrivacyLedger
from dp_tfx.plan import TrainingPlan


def main(history: str, dataset_size: str, steps: str, workdir: str, name: str) -> None:
  size, steps, work = int(dataset_size), int(steps), pathlib.Path(workdir)
  plan = TrainingPlan.from_config(
    DPConfig(noise_multiplier=1.1, batch_size=100, steps=steps, delta=1e-5), size
  )
  ledger = PrivacyLedger.open_history(
    history, size, f"sha256:{name}", data_source=name, run_id=name
  )
  (work / f"{name}.ready").write_text(str(len(ledger.segments)))
  while not (work / "go").exists():
    time.sleep(0.01)
  ledger.start_segment(plan)
  with open(work / f"{name}.ran", "a") as ran:
    for step in range(steps):
      ledger.record_step()
      ran.write(f"{step}\n")  # the step "runs" only after it was recorded
      ran.flush()
      os.fsync(ran.fileno())
      time.sleep(0.002)


if __name__ == "__main__":
  main(*sys.argv[1:])
