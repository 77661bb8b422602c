"""Fits interrupted at any step (Ctrl-C in a notebook) never hang the process, and their steps
count."""

import gc

import keras
import pytest

import dp_tfx
from dp_tfx import keras as dp_keras
from dp_tfx.ledger import read_history
from tests.dp_tfx import models

N = 40
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _InterruptAtStep(keras.callbacks.Callback):
  """Raises KeyboardInterrupt as the step `step` is about to run (0: before the first)."""

  def __init__(self, step):
    super().__init__()
    self._step = step
    self._started = 0

  def on_train_batch_begin(self, batch, logs=None):
    if self._started == self._step:
      raise KeyboardInterrupt(f"interrupted at step {self._step}")
    self._started += 1


def _dp_model(history):
  dp_model = dp_tfx.make_private(
    models.dense_model(),
    dp_tfx.DPConfig(l2_norm_clip=0.3, noise_multiplier=1.0, batch_size=8, steps=6, delta=1e-5),
    ledger_history=history,
  )
  dp_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
  return dp_model


def test_the_fit_input_pipeline_runs_no_python():
  # tf.data threads that need the GIL (tf.numpy_function, py_function) deadlock the process when
  # the main thread, holding the GIL, frees an interrupted fit's iterator.
  x, y = models.batch_for("dense", N, seed=1)
  dp_model = _dp_model(None)
  data = dp_keras._training_data(x, y)
  dp_model._prepare(data)
  pipeline = dp_model._distributed_batches(data, 0, 3, replicas=1)
  assert b"PyFunc" not in pipeline._as_serialized_graph().numpy()


@pytest.mark.timeout(600)
def test_fits_interrupted_at_varied_steps_many_times_in_one_process_all_finish(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  interrupted_at = [0, 1, 3, 5, 2, 4] * 2
  for index, step in enumerate(interrupted_at):
    history = tmp_path / f"history-{index}"
    with pytest.raises(KeyboardInterrupt):
      _dp_model(history).fit(x, y, verbose=0, callbacks=[_InterruptAtStep(step)])
    # The next fit traces its step while the interrupted one's iterator is freed.
    later = _dp_model(history)
    gc.collect()
    later.fit(x, y, verbose=0)
    # The ledger counts a step before it runs: the interrupted one counts too.
    assert [segment.noisy_steps for segment in read_history(history)] == [step + 1, 6]
