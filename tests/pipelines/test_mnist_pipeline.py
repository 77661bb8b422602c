"""The DP MNIST pipeline end to end on small data: Local, Beam and a Kubeflow compile, with the
privacy audit and the non-private control."""

import json
import os
import re
import pathlib
import time

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.utils import path_utils

from dp_tfx import budget
from dp_tfx.config import DPConfig
from dp_tfx.ledger import LedgerError, directory_digest
from dp_tfx.pipelines import mnist_data, mnist_model, runner
from dp_tfx.policy import PolicyRefusal, PrivacyPolicy
from tests import recomputed

# 200 training digits, batch 50, 2 epochs: 8 noisy steps, epsilon about 2.9 at delta 1e-5.
CONFIG = DPConfig(noise_multiplier=1.1, batch_size=50, epochs=2, delta=1e-5)
SMALL = dict(data_limit=200, hyperparameters={"learning_rate": 0.5, "jit_compile": False})


def _run(tmp_path, max_epsilon, runner_name=runner.LOCAL, **extra):
  options = runner.PipelineOptions(
    output_dir=str(tmp_path),
    dp_config=CONFIG,
    runner=runner_name,
    privacy_policy=PrivacyPolicy(max_epsilon=max_epsilon, delta=1e-5),
    **SMALL,
    **extra,
  )
  return runner.run(options)


def _store(tmp_path):
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
  return metadata_store.MetadataStore(config)


@pytest.mark.slow
def test_within_policy_the_model_is_pushed_and_lineage_is_recorded(tmp_path):
  result = _run(tmp_path, max_epsilon=10.0)
  assert result["pushed"] and result["epsilon"] < 10.0
  pushed = pathlib.Path(result["pushed_model_dir"])
  assert (pushed / "saved_model.pb").exists()
  assert str(pushed).startswith(str(tmp_path / "serving_model"))
  report = json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
  assert report["decision"]["blessed"] and report["ledger"]["noisy_steps"] == 8
  assert result["epsilon"] == pytest.approx(report["epsilon"])
  store = _store(tmp_path)
  for type_name in ("dp_tfx.PrivacyLedger", "dp_tfx.PrivacyReport"):
    (artifact,) = store.get_artifacts_by_type(type_name)
    events = store.get_events_by_artifact_ids([artifact.id])
    assert {e.type for e in events} >= {metadata_store_pb2.Event.OUTPUT}


@pytest.mark.slow
def test_beam_runner_pushes_within_policy(tmp_path):
  result = _run(
    tmp_path,
    max_epsilon=10.0,
    runner_name=runner.BEAM,
    beam_pipeline_args=["--direct_num_workers=1"],
  )
  assert result["pushed"] and result["runner"] == "beam"


@pytest.mark.slow
def test_streamed_poisson_batches_train_and_report_the_in_memory_epsilon(tmp_path):
  # ExampleGen -> PoissonBatchGen (Beam, two worker processes) -> DPTrainer streaming the
  # batches -> auditor -> evaluator -> Pusher; then the same facts in memory.
  streamed = _run(
    tmp_path / "streamed",
    max_epsilon=10.0,
    runner_name=runner.BEAM,
    beam_pipeline_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    poisson_batches=True,
  )
  assert streamed["pushed"], streamed["reasons"]
  store = _store(tmp_path / "streamed")
  (batches,) = store.get_artifacts_by_type("dp_tfx.PoissonBatches")
  manifest = json.loads((pathlib.Path(batches.uri) / "poisson_batches.json").read_text())
  assert (manifest["dataset_size"], manifest["steps"], manifest["sampling_rate"]) == (200, 8, 0.25)
  report = json.loads((pathlib.Path(streamed["report_dir"]) / "report.json").read_text())
  assert report["ledger"]["noisy_steps"] == 8
  assert report["ledger"]["facts"]["segments"][0]["dataset_fingerprint"] == (
    "poisson-draw:" + manifest["draw"]
  )
  assert batches.custom_properties["manifest_digest"].string_value.startswith("sha256:")
  # In a budget of its own: the same people, a second run would compose with the first.
  in_memory = _run(
    tmp_path / "in_memory", max_epsilon=10.0, budget_root=str(tmp_path / "other-budgets")
  )
  assert streamed["epsilon"] == in_memory["epsilon"]


def test_kubeflow_compiles_to_a_pipeline_spec_naming_both_components(tmp_path):
  from kfp.pipeline_spec import pipeline_spec_pb2
  from google.protobuf import json_format

  result = _run(
    tmp_path,
    max_epsilon=3.0,
    runner_name=runner.KUBEFLOW,
    container_image="example.org/dp-tfx:test",
    budget_root="gs://dp-tfx-test/budgets",
  )
  document = json.loads(pathlib.Path(result["pipeline_file"]).read_text())
  spec = json_format.ParseDict(
    document["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=True
  )
  tasks = set(spec.root.dag.tasks)
  assert {"DPTrainer", "PrivacyAuditor", "PrivacyEvaluator", "Pusher"} <= tasks
  assert "example.org/dp-tfx:test" in json.dumps(document)


@pytest.mark.slow
def test_cli_ends_with_one_json_line_and_a_verdict(tmp_path, capsys):
  from dp_tfx.pipelines import cli

  assert (
    cli.main(
      [
        "pipeline",
        "--output-dir",
        str(tmp_path),
        "--data-limit",
        "200",
        "--batch-size",
        "50",
        "--epochs",
        "1",
        "--max-epsilon",
        "8",
        "--json",
      ]
    )
    == 0
  )
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in (
    "epsilon",
    "delta",
    "max_epsilon",
    "accuracy",
    "pushed",
    "pushed_model_dir",
    "report_dir",
    "audit",
  ):
    assert key in result
  assert result["pushed"] and result["verdict"].startswith("PUSHED")
  assert 0 <= result["accuracy"] <= 1
  # One epoch of heavy noise on 200 digits: the attack proves nothing beyond the ledger's epsilon.
  assert 0 <= result["audit"]["empirical_epsilon_lower_bound"] <= result["epsilon"]
  assert result["audit"]["canary_exposure"] == {}  # MNIST carries no canaries


@pytest.mark.slow
def test_a_non_private_control_is_trained_and_audited_but_never_pushed(tmp_path):
  result = _run(tmp_path, max_epsilon=10.0, control=True)
  assert result["pushed"]
  models = _store(tmp_path).get_artifacts_by_type("Model")
  assert len(models) == 2  # DP model and control
  (control_model,) = [m for m in models if "/NonPrivateControl/" in m.uri]
  # What was pushed is the model the ledger names, not the control.
  report = json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
  assert directory_digest(result["pushed_model_dir"]) == report["ledger"]["facts"]["model_digest"]
  assert directory_digest(result["pushed_model_dir"]) != directory_digest(
    path_utils.serving_model_dir(control_model.uri)
  )

  # The control's audit: its held-out accuracy is the served control's accuracy on the eval
  # split, recomputed here; its membership bound follows from its attack counts.
  control = report["audit"]["control"]
  assert result["audit"]["control"]["held_out_metrics"] == control["held_out_metrics"]
  records = [
    r.numpy()
    for r in tf.data.TFRecordDataset(str(tmp_path / "data" / mnist_data.EVAL_DIR / "data.tfrecord"))
  ]
  serving = tf.saved_model.load(path_utils.serving_model_dir(control_model.uri))
  logits = serving.signatures["serving_default"](examples=tf.constant(records))["outputs"]
  labels = tf.io.parse_example(tf.constant(records), mnist_model.feature_spec(None))[
    mnist_model.LABEL_KEY
  ].numpy()
  assert control["held_out_metrics"]["accuracy"] == pytest.approx(
    float(np.mean(np.argmax(logits, axis=-1) == labels))
  )
  recomputed.assert_membership_section_follows_from_its_counts(control, report["delta"])
  assert (
    result["audit"]["control"]["empirical_epsilon_lower_bound"]
    == control["empirical_epsilon_lower_bound"]
  )


@pytest.mark.slow
def test_tfx_evaluator_accuracy_gate_combines_with_the_privacy_gate(tmp_path):
  result = _run(tmp_path, max_epsilon=10.0, min_accuracy=0.99)  # privacy fine, accuracy not
  assert not result["pushed"]
  assert result["reasons"] == ["the upstream model_blessing is NOT blessed"]
  (tfx_blessing,) = [
    a for a in _store(tmp_path).get_artifacts_by_type("ModelBlessing") if "/Evaluator/" in a.uri
  ]
  assert tfx_blessing.custom_properties["blessed"].int_value == 0


@pytest.mark.slow
def test_a_rerun_from_another_output_dir_adds_to_what_was_spent(tmp_path):
  # Two output dirs, one budget: the data source's, under the budget root.
  first = _run(tmp_path / "a", max_epsilon=100.0)
  second = _run(tmp_path / "b", max_epsilon=100.0)
  assert (
    second["ledger_history"]
    == first["ledger_history"]
    == budget.history_dir(os.environ[budget.BUDGET_ROOT_ENV], "mnist:embedded")
  )
  reports = [
    json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
    for result in (first, second)
  ]
  assert [report["ledger"]["first_run_in_budget"] for report in reports] == [True, False]
  assert reports[1]["ledger"]["noisy_steps"] == 16
  assert len(reports[1]["ledger"]["facts"]["segments"]) == 2
  assert second["epsilon"] > first["epsilon"]
  # A history named directly composes the same way.
  third = _run(tmp_path / "c", max_epsilon=100.0, ledger_history_dir=first["ledger_history"])
  assert third["epsilon"] > second["epsilon"]
  # The same digits under another data source name: refused before training.
  with pytest.raises(LedgerError, match="under the data source 'mnist:embedded'"):
    _run(tmp_path / "d", max_epsilon=100.0, ledger_data_source="renamed digits")
  assert not _store(tmp_path / "d").get_artifacts_by_type("Model")
  # The outcome is the run's own: one that wrote no report never shows an earlier verdict.
  metadata = str(tmp_path / "a" / "metadata.sqlite")
  assert runner.read_outcome(metadata)["epsilon"] == first["epsilon"]
  later = runner.read_outcome(metadata, since_ms=int(time.time() * 1000) + 1000)
  assert (later["blessed"], later["pushed"], later["epsilon"]) == (False, False, None)
  assert later["reasons"] == [
    "this run wrote no privacy report: it ended before the PrivacyEvaluator"
  ]


def test_a_run_that_could_never_be_blessed_is_refused_before_it_trains(tmp_path):
  # 8 noisy steps on 200 digits give epsilon 4.6: over a max_epsilon of 0.5 before any step.
  with pytest.raises(
    PolicyRefusal,
    match=r"refused before training, nothing was spent: this run "
    r"\(8 noisy steps.*epsilon 4.6\d* exceeds the policy's max_epsilon 0.5",
  ):
    _run(tmp_path, max_epsilon=0.5, audit=False)
  history = pathlib.Path(budget.history_dir(os.environ[budget.BUDGET_ROOT_ENV], "mnist:embedded"))
  assert not history.exists() or not any(history.iterdir())
  assert not _store(tmp_path).get_artifacts_by_type("Model")


@pytest.mark.parametrize(
  "extra, policy, message",
  [
    (
      dict(
        control=True,
        dp_config=DPConfig(noise_multiplier=1.1, batch_size=50, epochs=1.5, delta=1e-5),
      ),
      {},
      "whole number",
    ),
    (
      dict(
        control=True, dp_config=DPConfig(noise_multiplier=1.1, batch_size=50, steps=8, delta=1e-5)
      ),
      {},
      "whole number",
    ),
    (dict(control=True, audit=False), {}, "drop --no-audit"),
    ({}, dict(max_canary_exposure=8.0), "max_canary_exposure needs"),
    (dict(example="lm", hyperparameters={"momentum": 0.9}), {}, "does not use ['momentum']"),
  ],
  ids=[
    "fractional-epochs",
    "steps",
    "control-without-audit",
    "canary-limit-on-mnist",
    "momentum-on-lm",
  ],
)
def test_options_that_could_only_fail_after_training_are_refused_first(
  tmp_path, extra, policy, message
):
  options = dict(
    output_dir=str(tmp_path),
    dp_config=CONFIG,
    privacy_policy=PrivacyPolicy(max_epsilon=5, delta=1e-5, **policy),
  )
  options.update(extra)
  with pytest.raises(ValueError, match=re.escape(message)):
    runner.run(runner.PipelineOptions(**options))
  assert not (tmp_path / "data").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_history_lacking_an_earlier_runs_segment_is_refused_before_training(tmp_path):
  # MLMD lists the first run's segment: the same pipeline pointed at a new ledger history, or its
  # history without that segment, would start the budget afresh. The DPTrainer refuses either
  # before it trains.
  first = _run(tmp_path, max_epsilon=100.0)
  assert first["pushed"]
  history = pathlib.Path(first["ledger_history"])
  (segment,) = history.glob("segment-*.json")
  (first_ledger,) = _store(tmp_path).get_artifacts_by_type("dp_tfx.PrivacyLedger")
  recorded = (
    f"segment {segment.stem}, which DPTrainer run (artifact id {first_ledger.id}) recorded "
    f"in MLMD in the ledger history {history}, is missing from the ledger history "
  )
  new_history = tmp_path / "new-history"
  with pytest.raises(LedgerError, match=re.escape(recorded + str(new_history))):
    _run(tmp_path, max_epsilon=100.0, ledger_history_dir=str(new_history))
  written = segment.read_bytes()
  segment.unlink()
  with pytest.raises(LedgerError, match=re.escape(recorded + str(history))):
    _run(tmp_path, max_epsilon=100.0)
  assert len(_store(tmp_path).get_artifacts_by_type("Model")) == 1  # nothing trained since
  assert not new_history.exists() or not any(new_history.iterdir())
  # As the refusal says: copied into the new history, the first run counts there.
  (new_history / segment.name).write_bytes(written)
  third = _run(tmp_path, max_epsilon=100.0, ledger_history_dir=str(new_history))
  assert third["pushed"] and third["epsilon"] > first["epsilon"]
  report = json.loads((pathlib.Path(third["report_dir"]) / "report.json").read_text())
  assert report["ledger"]["noisy_steps"] == 16
