"""Resuming a run on Poisson batches drawn ahead with the weights it had reached.

A killed run's steps stay spent: the next fit on the same batches goes on at the first step no
run recorded (PoissonBatchStream.next_step). Without its weights, though, the model would start
again from scratch on what remains of the plan. `StepCheckpoint` saves the model's weights and
optimizer state every few steps, beside the draw they trained on, and restores them when a fit
on that draw starts again. A checkpoint is the model after noisy steps the ledger counts, so
keeping it releases nothing new. Keras's own BackupAndRestore cannot stand in: it replays the
epoch count it saved (the ledger decides where a DP run goes on) and restores the step counter
with the weights (the data would then follow the ledger, the noise another step).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from dp_tfx import files, workers

_WEIGHTS_FILE = "model.weights.h5"
_STATE_FILE = "checkpoint.json"


class StepCheckpoint(keras.callbacks.Callback):
  """For DPModel.fit on a PoissonBatchStream: saves the weights (and optimizer state) under
  `directory` every `every_steps` steps and at the end, per draw (per training data: the
  ledger's dataset fingerprint); a fit on a draw with a checkpoint starts from it.

  Args:
    directory: any tf.io.gfile directory that outlives the run (the DPTrainer uses one beside
      its model artifacts).
    every_steps: steps between saves (a killed run loses at most these to the model; their
      privacy is spent either way).
  """

  def __init__(self, directory: str, every_steps: int = 100):
    super().__init__()
    if not (isinstance(every_steps, int) and every_steps >= 1):
      raise ValueError(f"every_steps must be an int >= 1; got {every_steps!r}")
    self.directory = os.fspath(directory)
    self.every_steps = every_steps
    self.restored_step: Optional[int] = None
    self._since_save = 0

  def _draw_dir(self) -> str:
    fingerprint = self.model.privacy_ledger.dataset_fingerprint
    return os.path.join(self.directory, hashlib.sha256(fingerprint.encode()).hexdigest()[:32])

  def on_train_begin(self, logs=None):
    """Restores the draw's checkpoint, if any: saved at a step before this fit's first."""
    state_path = os.path.join(self._draw_dir(), _STATE_FILE)
    if not files.exists(state_path):
      return
    state = json.loads(files.read_text(state_path))
    first_step = int(self.model.noisy_steps.numpy())
    fingerprint = self.model.privacy_ledger.dataset_fingerprint
    if state.get("fingerprint") != fingerprint or not 0 <= state.get("step", -1) <= first_step:
      # A checkpoint past the ledger's next step would mean steps the ledger lost: stop.
      raise ValueError(f"the checkpoint in {self._draw_dir()} ({state}) is not of draw "
                       f"{fingerprint} at a step before {first_step}")
    if not self.model.optimizer.built:  # its state is in the checkpoint too
      self.model.optimizer.build(self.model.trainable_variables)
    self.model.load_weights(os.path.join(self._draw_dir(), _WEIGHTS_FILE))
    self.model.noisy_steps.assign(first_step)  # loaded with the weights; the ledger decides
    self.restored_step = state["step"]
    logging.info("StepCheckpoint: restored the weights of step %d; training goes on at step %d",
                 state["step"], first_step)

  def on_train_batch_end(self, batch, logs=None):
    self._since_save += 1
    if self._since_save >= self.every_steps:
      self._save()

  def on_train_end(self, logs=None):
    if self._since_save:
      self._save()

  def _save(self) -> None:
    """The weights (written whole, then renamed over the last), then the state naming their
    step: a save cut short leaves whole weights of a step the ledger counted either way. On
    several workers the chief saves (every worker restores)."""
    if not workers.is_chief(self.model.distribute_strategy):
      self._since_save = 0
      return
    directory = self._draw_dir()
    tf.io.gfile.makedirs(directory)
    step = int(self.model.noisy_steps.numpy())
    weights = os.path.join(directory, f"step-{step}.{_WEIGHTS_FILE}")
    self.model.save_weights(weights)
    final = os.path.join(directory, _WEIGHTS_FILE)
    tf.io.gfile.rename(weights, final, overwrite=True)
    files.write_text(os.path.join(directory, _STATE_FILE), json.dumps({
        "step": step,
        "fingerprint": self.model.privacy_ledger.dataset_fingerprint}))
    self._since_save = 0
