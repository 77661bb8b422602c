"""What the PrivacyEvaluator's tests share: the policies they judge by, and the ledgers, ledger
histories and MLMD records they judge, made as the DPTrainer makes them."""

import json

from dp_tfx.components import testing
from dp_tfx.config import DPConfig
from dp_tfx.ledger import PrivacyLedger, _hash_body
from dp_tfx.plan import TrainingPlan
from dp_tfx.policy import PrivacyPolicy

POLICY = PrivacyPolicy(max_epsilon=1.0, delta=1e-5)

HISTORY_PLAN = dict(noise_multiplier=1.1, batch_size=200, steps=40)
HISTORY_POLICY = PrivacyPolicy(max_epsilon=10.0, delta=1e-5, accountant="rdp")
SIGNED_POLICY = PrivacyPolicy(
  max_epsilon=10.0, delta=1e-5, accountant="rdp", require_signature=True
)


def one_run_ledger(**overrides):
  """One run's ledger: 3515 noisy steps at sigma 1.3, q 256/60000, unless `overrides` say else."""
  facts = dict(dataset_size=60000, batch_size=256, noise_multiplier=1.3, steps=3515)
  facts.update(overrides)
  return testing.make_ledger(**facts)


def run_into_history(history, steps=40, dataset_size=4000, run_id=None):
  """A run of `steps` noisy steps recorded in the ledger history, as the DPTrainer records one."""
  ledger = PrivacyLedger.open_history(
    history, dataset_size, f"sha256:{dataset_size}", data_source="digits", run_id=run_id
  )
  ledger.start_segment(TrainingPlan.from_config(DPConfig(**HISTORY_PLAN), dataset_size))
  for _ in range(steps):
    ledger.record_step()
  ledger.refresh()
  return ledger


def recount(path, steps):
  """The segment file at `path` made to record `steps` noisy steps, its content hash recomputed."""
  document = json.loads(path.read_text())
  document["body"]["segment"]["noisy_steps"] = steps
  document["content_hash"] = _hash_body(document["body"])  # a careful forger
  path.write_text(json.dumps(document))


def segment_file(history, ledger):
  """The file of the segment `ledger`'s run recorded in the history."""
  (segment,) = [s for s in ledger.segments if s.run_id == ledger.run_id]
  return history / f"{segment.segment_id}.json"


def earlier_run(tmp_path, history, run_id="earlier", artifact_id=101):
  """An earlier run recorded in the history, and its PrivacyLedger artifact as its DPTrainer
  recorded it in MLMD."""
  ledger = run_into_history(history, run_id=run_id)
  return ledger, testing.ledger_artifact(
    ledger, tmp_path / f"artifact-{artifact_id}", artifact_id=artifact_id
  )
