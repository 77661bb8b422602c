"""The DPTrainer executor on two worker processes (TF_CONFIG on 127.0.0.1, as Vertex AI and
Kubeflow training jobs set it): the chief alone writes the model, the metrics and the ledger."""

import json
import os
import subprocess
import sys

import pytest

from dp_tfx.components import model_io
from dp_tfx.config import DPConfig
from dp_tfx.ledger import LEDGER_FILE_NAME, read_history
from dp_tfx.pipelines import mnist_data
from tests.dp_tfx.test_workers import _free_ports

pytestmark = pytest.mark.slow

CONFIG = DPConfig(noise_multiplier=1.0, batch_size=30, steps=6, delta=1e-4, physical_batch_size=32)

# One worker; argv: index, ports, data directory, output root, shared ledger history.
_WORKER = """
import json, os, pathlib, sys
index, ports, data, root, history = (int(sys.argv[1]), sys.argv[2].split(","),
    pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4]), sys.argv[5])
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
from dp_tfx.components import specs, testing
from dp_tfx.pipelines import mnist_data, mnist_model
from tests.components.test_dp_trainer_workers import CONFIG

examples = testing.examples_artifact(root / f"examples{index}", {
    split: data / directory / "data.tfrecord"
    for split, directory in (("train", mnist_data.TRAIN_DIR), ("eval", mnist_data.EVAL_DIR))})
outputs = testing.run_dp_trainer(examples, root / f"worker{index}", CONFIG, mnist_model.__file__,
                                 {"jit_compile": False}, ledger_history_dir=history)
ledger = outputs[specs.PRIVACY_LEDGER_KEY][0]
print(json.dumps({name: ledger.get_custom_property(name)
                  for name in ("noisy_steps", "epsilon")}), flush=True)
"""


def test_two_workers_train_one_model_and_only_the_chief_writes(tmp_path):
  data = mnist_data.write_mnist_tfrecords(tmp_path / "data", limit=120)
  history = tmp_path / "history"
  ports = ",".join(map(str, _free_ports(2)))
  env = dict(os.environ, PYTHONPATH=os.getcwd(), TF_CPP_MIN_LOG_LEVEL="2")
  processes = [
    subprocess.Popen(
      [sys.executable, "-c", _WORKER, str(index), ports, str(data), str(tmp_path), str(history)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for index in range(2)
  ]
  results = []
  for process in processes:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    results.append(json.loads(stdout.strip().splitlines()[-1]))
  chief, other = tmp_path / "worker0", tmp_path / "worker1"
  # The chief: the ledger snapshot, the serving model, the metrics; its artifact's facts.
  assert (chief / "ledger" / LEDGER_FILE_NAME).exists()
  assert any((chief / "model").rglob("saved_model.pb"))
  assert (chief / "run" / model_io.METRICS_FILE).exists()
  assert results[0]["noisy_steps"] == 6 and results[0]["epsilon"] > 0
  # The other worker wrote nothing, and the history holds one run of 6 steps.
  assert not (other / "ledger" / LEDGER_FILE_NAME).exists()
  assert not list(other.rglob("saved_model.pb"))
  assert not (other / "run" / model_io.METRICS_FILE).exists()
  assert results[1] == {"noisy_steps": None, "epsilon": None}
  assert [segment.noisy_steps for segment in read_history(history)] == [6]
