"""Resuming a run on Poisson batches drawn ahead with the weights it had reached.

A killed run's steps stay spent: the next fit on the same batches goes on at the first step no
run recorded (PoissonBatchStream.next_step). Without its weights, though, the model would start
again from scratch on what remains of the plan. `StepCheckpoint` saves the model's weights and
optimizer state every few steps, beside the draw they trained on, and DPModel.fit restores them
when a fit on that draw starts again. A checkpoint is the model after noisy steps the ledger
counts, so keeping it releases nothing new; restoring one that was not (weights trained some
other way, planted where checkpoints are kept) would start DP training from a model that saw the
data without noise. So a checkpoint names the ledger segment that wrote it and its weights'
sha256, and with a ledger key (dp_tfx.signing) carries the key's signature: one that does not
name a run recorded on the draw, or whose weights or signature do not match, is refused. Keras's
own BackupAndRestore cannot stand in: it replays the epoch count it saved (the ledger decides
where a DP run goes on) and checks nothing of what it restores.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from dp_tfx import files, signing, workers
from dp_tfx.canonical import canonical_json

_WEIGHTS_FILE = "model.weights.h5"
_STATE_FILE = "checkpoint.json"


class StepCheckpoint(keras.callbacks.Callback):
  """For DPModel.fit on a PoissonBatchStream: saves the weights (and optimizer state) under
  `directory` every `every_steps` steps and at the end, per draw (per training data: the
  ledger's dataset fingerprint); DPModel.fit, given this callback, starts from the draw's
  checkpoint (`restore`).

  Args:
    directory: any tf.io.gfile directory that outlives the run (the DPTrainer uses one beside
      its model artifacts); on several workers, storage every worker reads.
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

  def _draw_dir(self, dp_model) -> str:
    fingerprint = dp_model.privacy_ledger.dataset_fingerprint
    return os.path.join(self.directory, hashlib.sha256(fingerprint.encode()).hexdigest()[:32])

  def restore(self, dp_model) -> str:
    """Loads the draw's checkpoint into `dp_model` (built, compiled, its step counter at this
    fit's first step) after checking it; returns what was restored ("step:sha256", or "" for
    nothing), which every worker must share.

    Raises:
      ValueError: for a checkpoint not of a run the ledger recorded on the draw, past this
        fit's first step, whose weights changed, or (with a ledger key) not signed with it.
    """
    directory = self._draw_dir(dp_model)
    state_path = os.path.join(directory, _STATE_FILE)
    if not files.exists(state_path):
      return ""
    state = json.loads(files.read_text(state_path))
    weights = os.path.join(directory, _WEIGHTS_FILE)
    first_step = int(dp_model.noisy_steps.numpy())
    problem = _problem(
      state,
      dp_model.privacy_ledger,
      first_step,
      files.sha256(weights) if files.exists(weights) else None,
    )
    if problem:
      raise ValueError(
        f"the checkpoint in {directory} cannot be restored: {problem}. Delete "
        "the directory to train on from a fresh model"
      )
    if not dp_model.optimizer.built:  # its state is in the checkpoint too
      dp_model.optimizer.build(dp_model.trainable_variables)
    dp_model.load_weights(weights)
    dp_model.noisy_steps.assign(first_step)  # loaded with the weights; the ledger decides
    self.restored_step = state["step"]
    logging.info(
      "StepCheckpoint: restored the weights of step %d; training goes on at step %d",
      state["step"],
      first_step,
    )
    return f"{state['step']}:{state['weights_sha256']}"

  def on_train_batch_end(self, batch, logs=None):
    self._since_save += 1
    if self._since_save >= self.every_steps:
      self._save()

  def on_train_end(self, logs=None):
    if self._since_save:
      self._save()

  def _save(self) -> None:
    """The weights (written whole, then renamed over the last), then the state naming their
    step, digest and segment: a save cut short leaves a state whose digest no longer matches
    (refused) or the previous whole checkpoint. On several workers the chief saves."""
    self._since_save = 0
    if not workers.is_chief(self.model.distribute_strategy):
      return
    ledger = self.model.privacy_ledger
    directory = self._draw_dir(self.model)
    tf.io.gfile.makedirs(directory)
    step = int(self.model.noisy_steps.numpy())
    written = os.path.join(directory, f"step-{step}.{_WEIGHTS_FILE}")
    self.model.save_weights(written)
    weights = os.path.join(directory, _WEIGHTS_FILE)
    tf.io.gfile.rename(written, weights, overwrite=True)
    state = {
      "step": step,
      "fingerprint": ledger.dataset_fingerprint,
      "segment_id": ledger.current_segment.segment_id,
      "weights_sha256": files.sha256(weights),
    }
    key = signing.configured_key()
    if key is not None:
      state["signature"] = signing.sign(canonical_json(state), key)
    files.write_text(os.path.join(directory, _STATE_FILE), json.dumps(state))


def _problem(state: dict, ledger, first_step: int, weights_sha256: Optional[str]) -> str:
  """Why a checkpoint's `state` cannot be restored before `first_step` with `ledger`; ""."""
  fingerprint = ledger.dataset_fingerprint
  if state.get("fingerprint") != fingerprint:
    return f"it is not of this training data ({fingerprint})"
  writer = next(
    (segment for segment in ledger.segments if segment.segment_id == state.get("segment_id")), None
  )
  if writer is None or writer.dataset_fingerprint != fingerprint or writer.noisy_steps < 1:
    return f"it names no run the ledger recorded on this data (segment {state.get('segment_id')!r})"
  step = state.get("step")
  if not (isinstance(step, int) and 0 < step <= first_step):
    return f"its step {step!r} is not one the ledger counted before step {first_step}"
  if weights_sha256 is None or state.get("weights_sha256") != weights_sha256:
    return "its weights are not the ones it recorded"
  key = signing.configured_key()
  unsigned = {name: value for name, value in state.items() if name != "signature"}
  if key is not None and not signing.is_valid(
    canonical_json(unsigned), state.get("signature"), key
  ):
    return "it is not signed with the ledger key"
  return ""
