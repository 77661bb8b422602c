"""Training on two worker processes (MultiWorkerMirroredStrategy on 127.0.0.1), as Vertex AI and
Kubeflow training jobs run it: the step, the noise, the ledger, and a worker killed mid-run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import dp_tfx

pytestmark = pytest.mark.slow

# One worker of the cluster; argv: index, ports, output directory, sigma, steps (of worker 0,
# of worker 1), examples, jit_compile (of worker 0, of worker 1).
_WORKER = """
import json, os, sys
index, ports, out, sigma, steps, examples = (int(sys.argv[1]), sys.argv[2].split(","),
    sys.argv[3], float(sys.argv[4]), int(sys.argv[5].split(",")[int(sys.argv[1])]),
    int(sys.argv[6]))
jit_compile = sys.argv[7].split(",")[index] == "True"
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
import keras, numpy as np, dp_tfx
from tests.dp_tfx.test_workers import data, one_step_update

x, y = data(examples)
with strategy.scope():
  update, dp_model = one_step_update(x, y, sigma, steps, os.path.join(out, f"ledger{index}.json"),
                                     jit_compile)
  try:
    update()
  except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error),
                      "noisy_steps": int(dp_model.noisy_steps.numpy())}), flush=True)
    sys.exit(3)
np.save(os.path.join(out, f"update{index}.npy"), update.result)
print(json.dumps({"noisy_steps": int(dp_model.noisy_steps.numpy())}), flush=True)
"""


def data(examples: int):
  rng = np.random.default_rng(3)
  return (
    rng.normal(size=(examples, 6)).astype("float32"),
    rng.integers(0, 3, examples).astype("int32"),
  )


def one_step_update(x, y, sigma: float, steps: int, ledger_path, jit_compile=False):
  """(update, dp_model): update() fits `steps` steps and sets update.result to start - end
  weights; the model and its start weights are the same in every process (seeded)."""
  keras.utils.set_random_seed(1)
  model = keras.Sequential(
    [keras.Input((6,)), keras.layers.Dense(60, activation="tanh"), keras.layers.Dense(3)]
  )
  start = [w.copy() for w in model.get_weights()]
  dp_model = dp_tfx.make_private(
    model,
    dp_tfx.DPConfig(
      l2_norm_clip=0.3,
      noise_multiplier=sigma,
      batch_size=16,
      steps=steps,
      seed=21,
      physical_batch_size=16,
    ),
    ledger_path=ledger_path,
    run_id="one-step",
  )  # same samples
  dp_model.compile(
    optimizer=keras.optimizers.SGD(1.0),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    jit_compile=jit_compile,
  )

  def update():
    dp_model.fit(x, y, verbose=0)
    update.result = np.concatenate(
      [(s - w).ravel() for s, w in zip(start, model.get_weights(), strict=True)]
    )

  return update, dp_model


def _free_ports(count: int) -> list:
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(out, sigma, steps, examples=64, worker_steps=None, jit_compile=(False, False)):
  ports = ",".join(map(str, _free_ports(2)))
  env = dict(os.environ, PYTHONPATH=os.getcwd(), TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_CONFIG", None)
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        _WORKER,
        str(index),
        ports,
        str(out),
        str(sigma),
        f"{steps},{worker_steps or steps}",
        str(examples),
        ",".join(map(str, jit_compile)),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for index in range(2)
  ]


def _finish(process, timeout=300):
  stdout, stderr = process.communicate(timeout=timeout)
  lines = stdout.strip().splitlines()
  return process.returncode, json.loads(lines[-1]) if lines else None, stderr


def _single_process_update(tmp_path, sigma):
  x, y = data(64)
  update, _ = one_step_update(x, y, sigma, 1, tmp_path / f"single{sigma}.json")
  update()
  return update.result


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_two_workers_take_the_single_process_step_and_one_draw_of_noise(tmp_path, sigma):
  workers = _start_workers(tmp_path, sigma, steps=1)
  for index, worker in enumerate(workers):
    code, result, stderr = _finish(worker)
    assert code == 0, stderr[-3000:]
    assert result == {"noisy_steps": 1}, index
  chief, other = np.load(tmp_path / "update0.npy"), np.load(tmp_path / "update1.npy")
  np.testing.assert_array_equal(chief, other)  # the workers hold one model
  # Only the chief writes the ledger: one step, counted once.
  ledger = dp_tfx.PrivacyLedger.load(tmp_path / "ledger0.json")
  assert [s.noisy_steps for s in ledger.segments] == [1]
  assert not (tmp_path / "ledger1.json").exists()
  clean = _single_process_update(tmp_path, 0.0)
  if sigma == 0:
    # The two workers' replicas each clip their half of the same Poisson sample: summed, the
    # single-process step exactly.
    np.testing.assert_allclose(chief, clean, atol=1e-6)
  else:
    # Each replica adds N(0, (sigma C)^2 / 2) from its own stream: summed, one draw of std
    # sigma C, divided by B = 16 (a shared stream, or noise sized for one replica, would give
    # sqrt(2) times that). 603 parameters: the sample std's standard error is 2.9%; allow 12%.
    noise = chief - clean
    assert noise.size == 603
    assert abs(noise.std() / (sigma * 0.3 / 16) - 1) < 0.12


@pytest.mark.parametrize(
  "difference",
  [
    {"worker_steps": 2},  # another plan
    # Padded to the physical batch (XLA) on one, to a multiple of 8 on the other: their slices
    # of a step would overlap (examples summed twice under noise sized for one).
    {"jit_compile": (True, False)},
  ],
)
def test_workers_unlike_the_chief_stop_before_the_first_step(tmp_path, difference):
  workers = _start_workers(tmp_path, 1.0, steps=1, **difference)
  for worker in workers:
    code, result, stderr = _finish(worker)
    assert code == 3, stderr[-3000:]
    assert result["error"] == "WorkersDisagreeError" and result["noisy_steps"] == 0
    assert "another plan, other training data or other run facts" in result["message"]
  assert dp_tfx.PrivacyLedger.load(tmp_path / "ledger0.json").segments == []
  assert not (tmp_path / "ledger1.json").exists()


def test_a_killed_worker_stops_the_run_with_its_steps_in_the_ledger(tmp_path):
  steps = 20_000
  workers = _start_workers(tmp_path, 1.0, steps=steps, examples=320)
  ledger_path = tmp_path / "ledger0.json"
  deadline = time.monotonic() + 240
  recorded = 0
  while recorded < 5 and time.monotonic() < deadline:
    time.sleep(0.5)
    if ledger_path.exists():
      try:
        recorded = dp_tfx.PrivacyLedger.load(ledger_path).noisy_steps
      except Exception:  # noqa: BLE001 (mid-write)
        pass
  assert recorded >= 5, workers[0].stderr.read()[-3000:] if workers[0].poll() is not None else ""
  workers[1].send_signal(signal.SIGKILL)
  code, result, stderr = _finish(workers[0], timeout=300)
  workers[1].wait()
  assert code == 3, stderr[-3000:]
  ledger = dp_tfx.PrivacyLedger.load(ledger_path)
  (segment,) = ledger.segments
  assert segment.finished_at is not None  # the run is over: its reservation no longer holds
  # Found at once (the chief's next collective fails: 1.2 s after the kill on this machine); every
  # step the chief took is recorded (at most one more: each is recorded before it runs).
  assert result["error"] == "UnavailableError"
  assert result["noisy_steps"] <= segment.noisy_steps <= result["noisy_steps"] + 1
  assert segment.noisy_steps < steps
