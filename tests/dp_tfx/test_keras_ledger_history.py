"""make_private(ledger_history=...): runs record their own segment files in a shared history."""

import json

import keras
import pytest

import dp_tfx
from dp_tfx.ledger import read_history
from tests.dp_tfx import models

N = 40
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _dp_model(history, steps, **options):
  config = dp_tfx.DPConfig(
    l2_norm_clip=0.3, noise_multiplier=1.0, batch_size=8, steps=steps, delta=1e-5
  )
  dp_model = dp_tfx.make_private(models.dense_model(), config, ledger_history=history, **options)
  dp_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
  return dp_model


class _Crash(keras.callbacks.Callback):
  def on_train_batch_end(self, batch, logs=None):
    if batch == 2:
      raise KeyboardInterrupt("killed")


def test_a_crashed_run_keeps_its_steps_and_the_next_run_adds_to_them(tmp_path):
  x, y = models.batch_for("dense", N, seed=3)
  crashed = _dp_model(tmp_path, steps=10, data_source="digits", run_id="crashed")
  with pytest.raises(KeyboardInterrupt):
    crashed.fit(x, y, verbose=0, callbacks=[_Crash()])
  assert int(crashed.noisy_steps.numpy()) == 3
  assert [s.noisy_steps for s in read_history(tmp_path)] == [3]
  assert read_history(tmp_path)[0].finished_at  # ended by an exception: reserves no more
  again = _dp_model(tmp_path, steps=10)
  again.fit(x[:-1], y[:-1], verbose=0)  # one example less: the same budget
  segments = read_history(tmp_path)
  assert sorted(s.noisy_steps for s in segments) == [3, 10]
  assert sorted(s.dataset_size for s in segments) == [N - 1, N]
  assert again.privacy_ledger.noisy_steps == 13
  assert again.epsilon() == pytest.approx(again.privacy_ledger.epsilon(1e-5))
  (first,) = [s for s in segments if s.run_id == "crashed"]
  assert first.data_source == "digits"
  # Each run wrote only its own file; the crashed run's file was never touched again.
  files = sorted(tmp_path.glob("segment-*.json"))
  assert len(files) == 2
  assert {json.loads(f.read_text())["body"]["segment"]["run_id"] for f in files} == {
    "crashed",
    again.privacy_ledger.run_id,
  }


def test_ledger_path_and_ledger_history_are_exclusive(tmp_path):
  with pytest.raises(ValueError, match="not both"):
    dp_tfx.make_private(
      models.dense_model(),
      dp_tfx.DPConfig(noise_multiplier=1.0, epochs=1),
      ledger_path=tmp_path / "l.json",
      ledger_history=tmp_path / "h",
    )
