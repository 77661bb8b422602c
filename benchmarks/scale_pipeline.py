"""The whole pipeline on a large synthetic dataset, as one run: ImportExampleGen ->
PoissonBatchGen -> DPTrainer (streaming the batches) -> PrivacyAuditor -> PrivacyEvaluator ->
Pusher, on LocalDagRunner (Beam's DirectRunner, 2 worker processes).

For each size N it writes benchmarks.scale's synthetic examples (N for training, N / 100 for
eval) and prints one JSON line:

  examples              N
  wall_seconds          the whole run, and per component (from MLMD's execution records)
  trainer_added_rss_mb  the process's peak resident memory while the DPTrainer ran, less its
                        memory when the DPTrainer started (sampled every 0.1 s): what training
                        on N examples took, to compare across N
  epsilon, in_memory_epsilon  what the PrivacyEvaluator judged, and what the in-memory path's
                        plan gives for the same facts (DPConfig and N): they must be equal
  pushed, noisy_steps   the verdict, and the steps the ledger counts

    .venv/bin/python -m benchmarks.scale_pipeline --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.scale import write_examples  # noqa: E402

STEPS, BATCH = 200, 256


class _RssSampler:
  """(time, resident MB) of this process every `interval` seconds, in a daemon thread."""

  def __init__(self, interval: float = 0.1):
    self.samples = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
    self._thread.start()

  def _run(self, interval):
    from benchmarks.step_overhead import _status_kib

    while not self._stop.is_set():
      self.samples.append((time.time(), _status_kib("VmRSS") / 1024))
      time.sleep(interval)

  def stop(self):
    self._stop.set()
    self._thread.join()

  def added_between(self, start: float, end: float) -> float:
    """Peak RSS in [start, end] less the last sample before start."""
    before = [mb for t, mb in self.samples if t <= start] or [self.samples[0][1]]
    during = [mb for t, mb in self.samples if start <= t <= end] or before[-1:]
    return max(during) - before[-1]


def _component_times(metadata_path: str) -> dict:
  """{component: (start, end)} in seconds since the epoch, from MLMD's executions."""
  from ml_metadata import metadata_store
  from ml_metadata.proto import metadata_store_pb2

  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  store = metadata_store.MetadataStore(config)
  type_names = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
  times = {}
  for execution in store.get_executions():
    times[type_names[execution.type_id]] = (
      execution.create_time_since_epoch / 1000,
      execution.last_update_time_since_epoch / 1000,
    )
  return times


def _report(outcome: dict) -> dict:
  from dp_tfx.report import REPORT_FILE

  with open(os.path.join(outcome["report_dir"], REPORT_FILE)) as handle:
    return json.load(handle)


def run(size: int, root: str) -> dict:
  from tfx import v1 as tfx

  import dp_tfx
  from dp_tfx.pipelines import dp_pipeline, runner

  data = os.path.join(root, "data")
  for split, count in (("train", size), ("eval", max(size // 100, 1000))):
    os.makedirs(os.path.join(data, split))
    write_examples(os.path.join(data, split, "data.tfrecord.gz"), count, seed=len(split))
  config = dp_tfx.DPConfig(
    l2_norm_clip=1.0, noise_multiplier=1.0, batch_size=BATCH, steps=STEPS, delta=1e-6
  )
  policy = dp_tfx.PrivacyPolicy(max_epsilon=10.0, delta=1e-6)
  metadata = os.path.join(root, "metadata.sqlite")
  pipeline = dp_pipeline.create_pipeline(
    pipeline_name="dp-scale",
    pipeline_root=os.path.join(root, "pipeline_root"),
    data_root=data,
    serving_model_dir=os.path.join(root, "serving_model"),
    dp_config=config,
    privacy_policy=policy,
    module_path="benchmarks.scale_module",
    metadata_path=metadata,
    beam_pipeline_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    ledger_history_dir=os.path.join(root, "privacy_ledgers"),
    poisson_batches=True,
  )
  sampler = _RssSampler()
  started = time.time()
  tfx.orchestration.LocalDagRunner().run(pipeline)
  wall = time.time() - started
  sampler.stop()
  outcome = runner.read_outcome(metadata)
  times = _component_times(metadata)
  trainer = times["DPTrainer"]
  plan = dp_tfx.TrainingPlan.from_config(config, size)
  return {
    "examples": size,
    "wall_seconds": round(wall, 1),
    "component_seconds": {
      name: round(end - start, 1)
      for name, (start, end) in sorted(times.items(), key=lambda item: item[1][0])
    },
    "trainer_added_rss_mb": round(sampler.added_between(*trainer)),
    "peak_rss_mb": round(max(mb for _, mb in sampler.samples)),
    "epsilon": outcome["epsilon"],
    "in_memory_epsilon": plan.epsilon(policy.accountant),
    "delta": outcome["delta"],
    "pushed": outcome["pushed"],
    "noisy_steps": _report(outcome)["ledger"]["noisy_steps"],
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
  args = parser.parse_args(argv)
  for size in args.sizes:
    with tempfile.TemporaryDirectory(prefix="dp_tfx_scale_pipeline_") as root:
      print(json.dumps(run(size, root)), flush=True)


if __name__ == "__main__":
  main()
