"""A DP training run under a privacy policy, for tests of concurrent fits in separate processes.

    python -m tests.dp_tfx.fit_worker HISTORY WORKDIR NAME MAX_EPSILON

Builds a DP model (10 noisy steps on 40 examples, ledger history HISTORY, run id NAME; with
HISTORY ending in .json, that one ledger file as its ledger_path), says so (WORKDIR/NAME.ready),
waits for WORKDIR/go, then fits and writes WORKDIR/NAME.json: the steps it trained and, if the
policy refused it, why (or, if the ledger did, its error).
"""

import json
import pathlib
import sys
import time

import keras

import dp_tfx
from dp_tfx.ledger import LedgerError
from dp_tfx.policy import PolicyRefusal, PrivacyPolicy
from tests.dp_tfx import models


class _Slow(keras.callbacks.Callback):
  """Keeps the run training long enough for the other to check while it holds its reservation."""

  def on_train_batch_end(self, batch, logs=None):
    time.sleep(0.2)


def main(history: str, workdir: str, name: str, max_epsilon: str) -> None:
  work = pathlib.Path(workdir)
  keras.utils.set_random_seed(1)
  x, y = models.batch_for("dense", 40, seed=1)
  config = dp_tfx.DPConfig(
    l2_norm_clip=0.3, noise_multiplier=1.0, batch_size=8, steps=10, delta=1e-5
  )
  policy = PrivacyPolicy(max_epsilon=float(max_epsilon), delta=1e-5, accountant="rdp")
  ledger = (
    dict(ledger_path=history)
    if history.endswith(".json")
    else dict(ledger_history=history, run_id=name)
  )
  dp_model = dp_tfx.make_private(
    models.dense_model(), config, policy=policy, accountant="rdp", **ledger
  )
  dp_model.compile(
    optimizer=keras.optimizers.SGD(0.1),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  (work / f"{name}.ready").write_text("")
  while not (work / "go").exists():
    time.sleep(0.01)
  refusal = error = None
  try:
    dp_model.fit(x, y, verbose=0, callbacks=[_Slow()])
  except PolicyRefusal as refused:
    refusal = str(refused)
  except LedgerError as failed:
    error = str(failed)
  (work / f"{name}.json").write_text(
    json.dumps({"trained": int(dp_model.noisy_steps.numpy()), "refusal": refusal, "error": error})
  )


if __name__ == "__main__":
  main(*sys.argv[1:])
