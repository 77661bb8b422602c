"""DPTrainer executor on real artifacts: trains, exports for serving, seals the ledger."""

import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from dp_tfx import accounting, budget
from dp_tfx.components import artifacts, ledger_records, model_io, specs, testing
from dp_tfx.components.dp_trainer import component
from dp_tfx.config import DPConfig
from dp_tfx.ledger import (
  LEDGER_FILE_NAME,
  LedgerError,
  PrivacyLedger,
  directory_digest,
  read_history,
)
from dp_tfx.pipelines import mnist_data, mnist_model
from dp_tfx.policy import PrivacyPolicy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("dp_trainer")
  data = pathlib.Path(mnist_data.write_mnist_tfrecords(root / "data", limit=120))
  examples = testing.examples_artifact(
    root / "examples",
    {
      split: data / directory / "data.tfrecord"
      for split, directory in (("train", mnist_data.TRAIN_DIR), ("eval", mnist_data.EVAL_DIR))
    },
  )
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=6, delta=1e-4, seed=1)
  outputs = testing.run_dp_trainer(
    examples, root, config, mnist_model.__file__, {"jit_compile": False}
  )
  return outputs, data


def test_ledger_counts_the_steps_and_names_the_exported_model(trained):
  outputs, _ = trained
  ledger_artifact = outputs[specs.PRIVACY_LEDGER_KEY][0]
  ledger = PrivacyLedger.load(os.path.join(ledger_artifact.uri, LEDGER_FILE_NAME))
  assert ledger.noisy_steps == 6 and ledger.dataset_size == 120
  serving_dir = path_utils.serving_model_dir(outputs[specs.MODEL_KEY][0].uri)
  assert ledger.model_digest == directory_digest(serving_dir)
  assert (
    ledger_artifact.get_string_custom_property(ledger_records.LEDGER_HASH_PROPERTY)
    == ledger.content_hash()
  )


def test_the_privacy_facts_are_queryable_in_mlmd_on_the_ledger_and_the_model(trained):
  outputs, _ = trained
  ledger_artifact = outputs[specs.PRIVACY_LEDGER_KEY][0]
  ledger = PrivacyLedger.load(os.path.join(ledger_artifact.uri, LEDGER_FILE_NAME))
  epsilon = ledger.epsilon(1e-4)
  for artifact in (ledger_artifact, outputs[specs.MODEL_KEY][0]):
    assert artifact.get_float_custom_property(artifacts.EPSILON_PROPERTY) == pytest.approx(
      epsilon, rel=1e-9
    )
    assert artifact.get_float_custom_property(artifacts.DELTA_PROPERTY) == 1e-4
    assert artifact.get_float_custom_property(artifacts.NOISE_MULTIPLIER_PROPERTY) == 1.0
    assert artifact.get_int_custom_property(artifacts.NOISY_STEPS_PROPERTY) == 6
    assert artifact.get_int_custom_property(artifacts.HISTORY_NOISY_STEPS_PROPERTY) == 6
    assert artifact.get_int_custom_property(artifacts.DATASET_SIZE_PROPERTY) == 120
    assert artifact.get_string_custom_property(artifacts.PRIVACY_UNIT_PROPERTY) == "example"


def test_model_run_has_tensorboard_logs_with_epsilon(trained):
  outputs, _ = trained
  run_dir = pathlib.Path(outputs[specs.MODEL_RUN_KEY][0].uri)
  events = list(run_dir.rglob("events.out.tfevents.*"))
  assert events
  tags = {
    value.tag
    for path in events
    for event in tf.compat.v1.train.summary_iterator(str(path))
    for value in event.summary.value
  }
  assert "epoch_epsilon" in tags and "epoch_loss" in tags


def test_eval_accuracy_is_recorded_and_is_the_exported_models_accuracy(trained):
  # get_float_custom_property reads a missing property as 0.0: check it is there, then recompute
  # it through the serving signature on the eval split's records.
  outputs, data = trained
  model = outputs[specs.MODEL_KEY][0]
  assert model.has_custom_property("eval_accuracy")
  records = [
    r.numpy() for r in tf.data.TFRecordDataset(str(data / mnist_data.EVAL_DIR / "data.tfrecord"))
  ]
  assert len(records) == 120
  serving = tf.saved_model.load(path_utils.serving_model_dir(model.uri))
  logits = serving.signatures["serving_default"](examples=tf.constant(records))["outputs"]
  labels = tf.io.parse_example(tf.constant(records), mnist_model.feature_spec(None))[
    mnist_model.LABEL_KEY
  ].numpy()
  served_accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
  assert model.get_float_custom_property("eval_accuracy") == pytest.approx(served_accuracy)


def test_serving_signature_takes_serialized_examples(trained):
  outputs, data = trained
  serving = tf.saved_model.load(path_utils.serving_model_dir(outputs[specs.MODEL_KEY][0].uri))
  records = [
    r.numpy()
    for r in tf.data.TFRecordDataset(str(data / mnist_data.EVAL_DIR / "data.tfrecord")).take(4)
  ]
  logits = serving.signatures["serving_default"](examples=tf.constant(records))["outputs"]
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits))


def test_component_validates_its_arguments():
  from tfx import types

  examples = types.Channel(type=standard_artifacts.Examples)
  with pytest.raises(ValueError, match="module_file or module_path"):
    component.DPTrainer(examples=examples, dp_config=DPConfig(noise_multiplier=1, epochs=1))
  with pytest.raises(TypeError, match="DPConfig"):
    component.DPTrainer(examples=examples, dp_config={"noise_multiplier": 1}, module_file="m.py")
  with pytest.raises(
    ValueError,
    match=r"target_epsilon \(6\) is above the privacy policy's "
    r"max_epsilon \(5\)",
  ):
    component.DPTrainer(
      examples=examples,
      dp_config=DPConfig(target_epsilon=6, epochs=1),
      module_file="m.py",
      privacy_policy=PrivacyPolicy(max_epsilon=5),
    )


def test_a_module_lacking_a_function_is_refused_when_the_pipeline_is_built(tmp_path):
  from tfx import types

  examples = types.Channel(type=standard_artifacts.Examples)
  config = DPConfig(noise_multiplier=1, epochs=1)
  module = tmp_path / "bc_module.py"
  module.write_text(
    "from somewhere import build_model\nimport tensorflow as tf\n"
    "def feature_spec(context):\n  return {}\n"
    "decode = lambda parsed, context: parsed\n"
  )
  with pytest.raises(
    ValueError,
    match=r"bc_module.py lacks compile_kwargs; required: "
    r"feature_spec, decode, build_model, compile_kwargs",
  ):
    component.DPTrainer(examples=examples, dp_config=config, module_file=str(module))
  module.write_text(module.read_text() + "def compile_kwargs(context):\n  return {}\n")
  component.DPTrainer(examples=examples, dp_config=config, module_file=str(module))
  component.DPTrainer(examples=examples, dp_config=config, module_path=mnist_model.__name__)
  with pytest.raises(ValueError, match="lacks feature_spec, decode, build_model, compile_kwargs"):
    component.DPTrainer(examples=examples, dp_config=config, module_path="dp_tfx.config")


def test_a_run_records_its_segment_in_the_history_its_artifact_names(trained):
  outputs, _ = trained
  ledger_uri = outputs[specs.PRIVACY_LEDGER_KEY][0].uri
  history = pathlib.Path(ledger_uri).parent / "history"  # testing.run_dp_trainer's own budget
  (segment_file,) = history.glob("segment-*.json")  # this run's own segment file
  (segment,) = read_history(history)
  assert segment.noisy_steps == 6 and segment.dataset_size == 120
  assert segment_file.name == segment.segment_id + ".json"
  ledger = PrivacyLedger.load(os.path.join(ledger_uri, LEDGER_FILE_NAME))
  assert ledger.history_dir == str(history)  # the artifact names the history it snapshots
  assert [s.segment_id for s in ledger.segments] == [segment.segment_id]
  assert ledger.data_source == segment.data_source == "unnamed"  # no pipeline around it here


def test_runs_under_other_pipeline_roots_compose_in_the_data_sources_budget(
  trained, tmp_path, caplog
):
  # The default history is the data source's budget under the budget root: another pipeline
  # root (output directory) reaches it, and says so when it is the first run there.
  _, data = trained
  examples = testing.examples_artifact(
    tmp_path / "examples",
    {
      split: data / directory / "data.tfrecord"
      for split, directory in (("train", mnist_data.TRAIN_DIR), ("eval", mnist_data.EVAL_DIR))
    },
  )
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=3, delta=1e-4)
  root = str(tmp_path / "budgets")
  run = lambda directory, source="mnist digits": testing.run_dp_trainer(
    examples,
    tmp_path / directory,
    config,
    mnist_model.__file__,
    {"jit_compile": False},
    data_source=source,
    budget_root=root,
  )
  with caplog.at_level("WARNING"):
    run("first-root")
  assert "no earlier run in the privacy budget of 'mnist digits'" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    second = run("second-root")
  assert "no earlier run" not in caplog.text
  ledger = PrivacyLedger.load(
    os.path.join(second[specs.PRIVACY_LEDGER_KEY][0].uri, LEDGER_FILE_NAME)
  )
  assert ledger.history_dir == budget.history_dir(root, "mnist digits")
  assert [s.noisy_steps for s in ledger.segments] == [3, 3]
  # The same examples under a new name open no fresh budget: refused before anything is spent.
  with pytest.raises(LedgerError, match="under the data source 'mnist digits'"):
    run("third-root", source="mnist digits, renamed")
  assert not list((tmp_path / "third-root").rglob("saved_model.pb"))
  assert not os.path.exists(budget.history_dir(root, "mnist digits, renamed"))


def test_a_run_on_changed_data_composes_with_the_earlier_run(trained, tmp_path):
  # The same data source with fewer examples: the history, not the data's content, is the budget.
  outputs, _ = trained
  history = tmp_path / "history"
  shutil.copytree(
    pathlib.Path(outputs[specs.PRIVACY_LEDGER_KEY][0].uri).parent / "history", history
  )
  data = pathlib.Path(mnist_data.write_mnist_tfrecords(tmp_path / "data", limit=100))
  # Splits named otherwise than "train" and "eval", as the DPTrainer's train_split/eval_split say.
  examples = testing.examples_artifact(
    tmp_path / "examples",
    {
      split: data / directory / "data.tfrecord"
      for split, directory in (
        ("training", mnist_data.TRAIN_DIR),
        ("validation", mnist_data.EVAL_DIR),
      )
    },
  )
  config = DPConfig(noise_multiplier=1.0, batch_size=25, steps=4, delta=1e-4, seed=1)
  # MLMD's record of the earlier run names the history it was copied from: its segment is here.
  second = testing.run_dp_trainer(
    examples,
    tmp_path / "run",
    config,
    mnist_model.__file__,
    {"jit_compile": False},
    ledger_history_dir=history,
    data_source="mnist digits",
    splits={"train_split": "training", "eval_split": "validation"},
    earlier_ledgers=outputs[specs.PRIVACY_LEDGER_KEY],
  )
  ledger = PrivacyLedger.load(
    os.path.join(second[specs.PRIVACY_LEDGER_KEY][0].uri, LEDGER_FILE_NAME)
  )
  assert ledger.dataset_size == 100 and ledger.noisy_steps == 6 + 4
  assert sorted((s.dataset_size, s.noisy_steps) for s in ledger.segments) == [(100, 4), (120, 6)]
  assert [run["data_source"] for run in ledger.runs()] == ["unnamed", "mnist digits"]
  expected = accounting.epsilon_of_event(
    accounting.compose(
      [accounting.dp_sgd_event(30 / 120, 1.0, 6), accounting.dp_sgd_event(25 / 100, 1.0, 4)]
    ),
    1e-4,
    accounting.RDP,
  )
  assert ledger.epsilon(1e-4, accounting.RDP) == pytest.approx(expected, rel=1e-9)


def test_a_history_lacking_an_earlier_runs_segment_is_refused_before_training(trained, tmp_path):
  # MLMD recorded the earlier run's segment in its history; this run is pointed at another one
  # (a fresh budget, were it not for the record): refused before anything is read or spent.
  outputs, data = trained
  earlier = outputs[specs.PRIVACY_LEDGER_KEY][0]
  examples = testing.examples_artifact(
    tmp_path / "examples",
    {
      split: data / directory / "data.tfrecord"
      for split, directory in (("train", mnist_data.TRAIN_DIR), ("eval", mnist_data.EVAL_DIR))
    },
  )
  history = tmp_path / "new-history"
  config = DPConfig(noise_multiplier=1.0, batch_size=30, steps=6, delta=1e-4)
  with pytest.raises(
    LedgerError,
    match=f"is missing from the ledger history {history}: its steps would drop out of the total",
  ):
    testing.run_dp_trainer(
      examples,
      tmp_path / "run",
      config,
      mnist_model.__file__,
      {"jit_compile": False},
      ledger_history_dir=history,
      privacy_policy=PrivacyPolicy(max_epsilon=100.0, delta=1e-4),
      earlier_ledgers=[earlier],
    )
  assert not history.exists()  # no segment written
  assert not list((tmp_path / "run").rglob("saved_model.pb"))  # no model
  assert not list((tmp_path / "run").rglob(LEDGER_FILE_NAME))


def test_gzipped_example_files_as_example_gens_write_them_are_read(tmp_path):
  plain = pathlib.Path(mnist_data.write_mnist_tfrecords(tmp_path / "data", limit=20))
  records = list(
    tf.data.TFRecordDataset(str(plain / mnist_data.TRAIN_DIR / "data.tfrecord")).as_numpy_iterator()
  )
  gzipped = tmp_path / "data_tfrecord-00000-of-00001.gz"
  with tf.io.TFRecordWriter(str(gzipped), options="GZIP") as writer:
    for record in records:
      writer.write(record)
  examples = testing.examples_artifact(tmp_path / "examples", {"train": gzipped})
  spec = mnist_model.feature_spec(None)
  images, labels = model_io.read_examples(
    model_io.split_file_patterns(examples, "train"), spec, mnist_model.decode, None
  )
  assert len(labels) == len(records) > 0 and images.shape[1:] == (28, 28, 1)
