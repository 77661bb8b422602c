"""The Keras 3 entry point: `make_private(model, config)` returns a model that trains with DP-SGD.

    dp_model = dp_tfx.make_private(model, dp_tfx.DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1,
                                                          batch_size=256, epochs=15))
    dp_model.compile(optimizer=keras.optimizers.SGD(0.25), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"], jit_compile=True)
    dp_model.fit(x_train, y_train, validation_data=(x_test, y_test))
    dp_model.epsilon()                # from the ledger of what actually ran
    dp_model.model.export("serving")  # the trained model itself, with no dp_tfx inside

One `fit` step is one logical DP-SGD step: a Poisson sample of the data (padded physical batches
with a mask), per-example (or per-microbatch) gradients clipped to C and summed, N(0, sigma^2 C^2)
noise added once, the sum divided by the expected batch size, and the user's optimizer applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from dp_tfx import accounting, clipping, dp_step, keys, noise, run_budget, sampling, workers
from dp_tfx.config import DPConfig
from dp_tfx.ledger import EXAMPLE, PrivacyLedger, dataset_fingerprint
from dp_tfx.plan import TrainingPlan
from dp_tfx.poisson_batches import PoissonBatchStream
from dp_tfx.policy import PrivacyPolicy, verification_key
from dp_tfx.resume import StepCheckpoint
from dp_tfx.version import __version__

EPSILON_LOG_KEY = "epsilon"
# Units of the epoch's samples whose gradient was NaN or infinite (they contributed zero): a
# statistic of the private data, in the training log only, never in the ledger or a report.
NONFINITE_LOG_KEY = "nonfinite_units"
_RAN_OUT_OF_DATA = ".*Your input ran out of data.*"
# Without XLA shapes may vary, so logical batches are padded only to a multiple of this.
_PAD_MULTIPLE_WITHOUT_XLA = 8
# Models with at most this many trainable values get each step's noise from the input pipeline
# (prefetched batches each carry one step's noise: 64 MiB of float32 at most).
_PIPELINE_NOISE_MAX_VALUES = 1 << 24


class PrivacyBudgetExhaustedError(RuntimeError):
  """Training would run past the planned noisy steps, i.e. spend more privacy than planned."""


def per_example_loss(loss: Any):
  """A function (y_true, y_pred) -> [B] per-example losses, from any single Keras loss.

  Losses with more than one value per example (e.g. per token) are averaged per example.
  """
  if loss is None or isinstance(loss, (list, tuple, dict)):
    raise ValueError(
      f"DP training needs one loss (a Keras loss name, function or Loss object); got {loss!r}"
    )
  loss_object = keras.losses.get(loss) if isinstance(loss, str) else loss
  unreduced = loss_object.call if isinstance(loss_object, keras.losses.Loss) else loss_object

  def losses(y_true, y_pred):
    values = tf.convert_to_tensor(unreduced(y_true, y_pred))
    if values.shape.rank == 0:
      # A batch-reduced loss would make every "per-example" gradient the batch gradient, and
      # clipping would no longer bound one example's influence.
      raise ValueError(
        "the loss returned one value for the whole batch; DP training needs one "
        "value per example (a Keras loss, or a function without reduction)"
      )
    if values.shape.rank > 1:
      values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return tf.cast(values, tf.float32)

  return losses


class _ExampleArrays:
  """Training data held in memory: each step's Poisson (or shuffled) sample is gathered from the
  arrays by the input pipeline (sampling.logical_batches). PoissonBatchStream is the same for
  data that does not fit: samples drawn ahead on Beam, read a step at a time."""

  def __init__(self, features, labels):
    self.features, self.labels = features, labels
    self.dataset_size = len(labels)
    self.fingerprint = dataset_fingerprint(features, labels)

  def example_batch(self, size: int = 2) -> tuple:
    return tf.nest.map_structure(lambda a: a[:size], self.features), self.labels[:size]

  def logical_batches(
    self, plan, key, first_step, last_step, pad_multiple=None, step_noise=None
  ) -> tf.data.Dataset:
    return sampling.logical_batches(
      self.features,
      self.labels,
      plan,
      key,
      first_step,
      last_step,
      pad_multiple=pad_multiple,
      step_noise=step_noise,
    )


def _training_data(x, y):
  """A PoissonBatchStream as it is; arrays, dicts of arrays or a dataset of examples in memory."""
  if isinstance(x, PoissonBatchStream):
    if y is not None:
      raise ValueError("a PoissonBatchStream carries its labels; call fit(stream) without y")
    return x
  return _ExampleArrays(*_materialize(x, y))


def _materialize(x, y):
  """In-memory features and labels from arrays, dicts of arrays, or a dataset of examples."""
  if isinstance(x, tf.data.Dataset):
    if y is not None:
      raise ValueError("give labels inside the dataset, as (features, label) examples")
    parts = list(x.batch(4096).as_numpy_iterator())
    if not parts or not isinstance(parts[0], tuple) or len(parts[0]) != 2:
      raise ValueError("a tf.data.Dataset for DP training must yield unbatched (features, label)")
    x = tf.nest.map_structure(lambda *a: np.concatenate(a), *[p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
  if y is None:
    raise ValueError("DP training needs labels: fit(x, y) or a dataset of (features, label)")
  x = tf.nest.map_structure(np.asarray, x)
  y = np.asarray(y)
  sizes = {len(a) for a in tf.nest.flatten(x)} | {len(y)}
  if len(sizes) != 1:
    raise ValueError(f"features and labels hold different numbers of examples: {sorted(sizes)}")
  return x, y


class _LedgerCallback(keras.callbacks.Callback):
  """Counts each noisy step in the ledger before it runs; logs epsilon after each epoch."""

  def __init__(self, dp_model: "DPModel", steps: int):
    super().__init__()
    self._dp_model = dp_model
    self._steps = steps
    self._started = 0
    # On several workers only the chief records (each step needs every worker, the chief too).
    self._records = workers.is_chief(dp_model.distribute_strategy)

  def on_train_begin(self, logs=None):
    self._steps_before = int(self._dp_model.noisy_steps.numpy())

  def on_train_batch_begin(self, batch, logs=None):
    if self._records:
      self._dp_model.privacy_ledger.record_step()
    self._started += 1

  def on_train_batch_end(self, batch, logs=None):
    if self._started >= self._steps:
      # The plan is spent: no further step, even if an input pipeline would yield one more.
      self._dp_model.stop_training = True

  def on_train_end(self, logs=None):
    if not self._records:
      return
    # Belt and braces: never record fewer steps than the model actually took.
    ledger = self._dp_model.privacy_ledger
    taken = int(self._dp_model.noisy_steps.numpy()) - self._steps_before
    while ledger.current_segment.noisy_steps < taken:
      ledger.record_step()

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None and self._records:
      logs[EPSILON_LOG_KEY] = self._dp_model.epsilon()


class DPModel(keras.Model):
  """Wraps a Keras model so that compile/fit train it with DP-SGD; `model` is the trained model.

  Args:
    model: the Keras model to train (built or buildable on the training data).
    config: the DP-SGD configuration.
    ledger_path: a file where to keep the privacy ledger; it is rewritten at every step. An
      existing ledger there is continued (its steps count, whatever data they were on), never
      overwritten. One process at a time: for runs that may overlap, use `ledger_history`.
    ledger_history: a ledger history directory (see dp_tfx.ledger.LedgerHistory) shared by every
      run on the data source: the ledger starts with every run recorded there, and this run
      writes only its own segment files, so concurrent runs never lose each other's steps.
    data_source: a name for the data source, recorded in each segment and listed in reports.
    run_id: this run's id in the ledger (default: a random one).
    accountant: "pld" (default) or "rdp", for epsilon in logs and sigma calibration.
    privacy_unit: what one training example stands for, as the ledger records it ("example";
      "sequence" for language models trained on text cut into sequences).
    policy: if given, `fit` refuses (PolicyRefusal, before any step) a run whose ledger, with
      this run's planned steps, this policy could never bless.
  """

  def __init__(
    self,
    model: keras.Model,
    config: DPConfig,
    ledger_path: Optional[str] = None,
    accountant: str = accounting.PLD,
    privacy_unit: str = EXAMPLE,
    ledger_history: Optional[str] = None,
    data_source: Optional[str] = None,
    run_id: Optional[str] = None,
    policy: Optional[PrivacyPolicy] = None,
    **kwargs,
  ):
    super().__init__(name=kwargs.pop("name", f"dp_{model.name}"), **kwargs)
    if not isinstance(config, DPConfig):
      raise TypeError(f"config must be a dp_tfx.DPConfig; got {type(config).__name__}")
    if ledger_path is not None and ledger_history is not None:
      raise ValueError(
        "give ledger_path (one file, one process) or ledger_history (a directory "
        "shared by concurrent runs), not both"
      )
    if policy is not None and not isinstance(policy, PrivacyPolicy):
      raise TypeError(f"policy must be a dp_tfx.PrivacyPolicy; got {type(policy).__name__}")
    accounting.make_accountant(accountant)  # validates the name early
    self.model = model
    self.dp_config = config
    self.accountant = accountant
    self.privacy_ledger: Optional[PrivacyLedger] = None
    self.plan: Optional[TrainingPlan] = None
    self._ledger_path = os.fspath(ledger_path) if ledger_path is not None else None
    self._ledger_history = os.fspath(ledger_history) if ledger_history is not None else None
    self._data_source = data_source
    self._run_id = run_id
    self._privacy_unit = privacy_unit
    self._policy = policy
    self._loss_fn = None
    self._taps = None
    self._base_key = keys.run_key(config.seed)
    # The key of the current training segment (see _segment_key). Kept out of Keras's weight
    # tracking on purpose: a saved noise key would let anyone subtract the noise.
    self.__dict__["_key"] = tf.Variable(self._base_key, trainable=False, name="dp_noise_key")
    self._nonfinite_units = keras.metrics.Sum(name=NONFINITE_LOG_KEY)
    self.noisy_steps = self.add_weight(
      name="noisy_steps",
      shape=(),
      dtype="int64",
      initializer="zeros",
      trainable=False,
      aggregation="only_first_replica",
    )

  def call(self, inputs, training=None):
    return self.model(inputs, training=training)

  def compile(self, optimizer="rmsprop", loss=None, **kwargs):
    if kwargs.get("steps_per_execution", 1) != 1:
      # Keras would then run several noisy steps per callback, and the ledger counts callbacks.
      raise ValueError("DP training needs steps_per_execution=1 (every noisy step is recorded)")
    self._loss_fn = per_example_loss(loss)
    super().compile(optimizer=optimizer, loss=loss, **kwargs)

  def train_on_batch(self, *args, **kwargs):
    raise RuntimeError(
      "train_on_batch would take a noisy step outside the plan and the ledger, on a batch that "
      "was not Poisson-sampled; use fit"
    )

  # -- privacy facts -------------------------------------------------------------------------------

  def epsilon(self, delta: Optional[float] = None) -> float:
    """epsilon(delta) of everything recorded in the ledger (delta defaults to the plan's)."""
    if self.privacy_ledger is None or self.plan is None:
      raise RuntimeError("nothing has been trained yet")
    if not workers.is_chief(self.distribute_strategy):
      raise RuntimeError("on several workers only the chief keeps the ledger: read epsilon there")
    return self.privacy_ledger.epsilon(delta or self.plan.delta, self.accountant)

  # -- training ------------------------------------------------------------------------------------

  def fit(
    self,
    x=None,
    y=None,
    epochs: Optional[int] = None,
    verbose="auto",
    callbacks=None,
    validation_data=None,
    validation_batch_size=None,
    validation_freq=1,
    **kwargs,
  ):
    """Runs DP-SGD for `epochs` epochs of ceil(N / B) logical steps (default: the whole plan).

    Raises:
      PrivacyBudgetExhaustedError: if the request goes past the planned noisy steps.
      PolicyRefusal: if the model has a policy that the ledger after these steps would fail,
        counting the steps other runs reserved as spent (see PrivacyLedger.with_reservations).
      ValueError: for arguments that would break the guarantee (batch_size, sample weights...),
        and for a model or loss that cannot take a DP step (found on a batch of zeros).
      LedgerError: with a ledger_path, if another run is still training on that file, or another
        process wrote it since this one did (before a step is taken: nothing is lost).
    """
    strategy = self.distribute_strategy
    chief = workers.is_chief(strategy)
    # On several workers the chief alone reads what the ledger allows, and any worker's error or
    # refusal stops all of them before the first step: here (workers.start_together), and after
    # the chief wrote its reservation (workers.all_ready).
    try:
      self._check_fit_arguments(kwargs)
      if self._loss_fn is None:
        raise RuntimeError("compile the DP model (optimizer, loss) before fit")
      data = _training_data(x, y)
      self._prepare(data)
      replicas = self._replicas()
      if isinstance(data, PoissonBatchStream) and (
        self._ledger_path is None and self._ledger_history is None
      ):
        raise ValueError(
          "training on Poisson batches drawn ahead needs a ledger that outlives "
          "this model (ledger_path or ledger_history): it is what tells the "
          "steps whose samples were used from those still unused"
        )
      requested_epochs = epochs
      done, key = 0, np.zeros([2], np.int64)
      if chief:
        done, steps, epochs = self._steps_to_take(data, epochs)
      # Everything that could make this run worthless is checked before its first counted step.
      self._rehearse_step(data)
      if chief:
        run_budget.refuse_before_training(
          self.privacy_ledger, self._policy, self.plan, steps, self.dp_config.seed is not None
        )
        key = self._segment_key().numpy()
    except Exception:
      workers.start_together(strategy, None, "", 0, np.zeros([2], np.int64), failed=True)
      raise
    done, key = workers.start_together(
      strategy, self.plan, data.fingerprint, done, key, self._run_facts(requested_epochs, replicas)
    )
    # Trained, refused or raised: once the reservation ends only the steps taken count.
    with contextlib.ExitStack() as budget:
      try:
        if not chief:
          self.noisy_steps.assign(done)
          done, steps, epochs = self._steps_to_take(data, requested_epochs)
        self._key.assign(key)
        self._build_batch = (*data.example_batch(2), np.ones([2], np.float32))
        dataset = self._distributed_batches(data, done, done + steps, replicas)
        # Weights a killed run on the draw reached (resume.StepCheckpoint); every worker must
        # start from the same.
        restored = ";".join(
          callback.restore(self)
          for callback in callbacks or []
          if isinstance(callback, StepCheckpoint)
        )
        if chief:
          budget.enter_context(
            run_budget.reservation(
              self.privacy_ledger, self.plan, steps, self.dp_config.seed is not None
            )
          )
          run_budget.check_with_reservation(
            self.privacy_ledger,
            self._policy,
            data if isinstance(data, PoissonBatchStream) else None,
            done,
          )
      except Exception:
        workers.all_ready(strategy, False)
        raise
      workers.all_ready(strategy, True, restored)
      return self._fit_steps(
        dataset,
        steps,
        epochs,
        verbose,
        callbacks,
        validation_data,
        validation_batch_size,
        validation_freq,
      )

  @staticmethod
  def _check_fit_arguments(kwargs) -> None:
    refused = sorted(
      k
      for k in kwargs
      if k
      in (
        "batch_size",
        "steps_per_epoch",
        "shuffle",
        "sample_weight",
        "class_weight",
        "validation_split",
        "initial_epoch",
      )
    )
    if refused:
      raise ValueError(
        f"DP fit does not take {refused}: batch size, sampling and steps come from "
        "the DPConfig (sample weights would change each example's sensitivity)"
      )
    if kwargs:
      raise TypeError(f"unexpected fit arguments {sorted(kwargs)}")

  def _run_facts(self, epochs: Optional[int], replicas: int) -> dict:
    """What every worker must share beside the plan and the data (workers.start_together): how
    each logical batch is padded and cut into replica slices (a worker that padded otherwise
    would slice other rows: examples summed twice), the epochs asked for, the policy, and the
    versions that draw the samples and the noise."""
    return {
      "pad_multiple": self._pad_multiple(replicas),
      "jit_compile": bool(self.jit_compile),
      "epochs": -1 if epochs is None else epochs,
      "policy": self._policy.to_json() if self._policy is not None else "",
      "versions": f"dp_tfx {__version__}, tensorflow {tf.__version__}",
    }

  def _steps_to_take(self, data, epochs: Optional[int]) -> tuple:
    """(first step, steps, epochs) of this fit; on a PoissonBatchStream (on the chief) the first
    step no run recorded, so that samples drawn ahead are used once: a rerun or a restart on
    the same batches goes on there (a crashed run's recorded steps are spent).

    Raises:
      PrivacyBudgetExhaustedError: if the plan is spent, or `epochs` asks for more than is left.
    """
    if isinstance(data, PoissonBatchStream) and workers.is_chief(self.distribute_strategy):
      self.privacy_ledger.refresh()
      self.noisy_steps.assign(data.next_step(self.privacy_ledger))
    done = int(self.noisy_steps.numpy())
    if not 0 <= done <= self.plan.steps:
      raise RuntimeError(
        f"the model's step counter reads {done}, outside the plan's "
        f"0..{self.plan.steps}: make a new DP model"
      )
    remaining = self.plan.steps - done
    if remaining <= 0:
      raise PrivacyBudgetExhaustedError(
        f"out of privacy budget: all {self.plan.steps} planned noisy steps have run"
      )
    per_epoch = self.plan.steps_per_epoch
    epochs_left = math.ceil(remaining / per_epoch)
    epochs = epochs_left if epochs is None else epochs
    if not isinstance(epochs, int) or epochs < 1:
      raise ValueError(f"epochs must be an integer >= 1; got {epochs!r}")
    if epochs > epochs_left:
      raise PrivacyBudgetExhaustedError(
        f"out of privacy budget: {epochs} epochs of {per_epoch} steps were asked for, but only "
        f"{remaining} of the {self.plan.steps} planned noisy steps are left ({epochs_left} "
        "epochs); plan more steps in the DPConfig to spend more privacy"
      )
    return done, min(remaining, epochs * per_epoch), epochs

  def _fit_steps(
    self,
    dataset,
    steps,
    epochs,
    verbose,
    callbacks,
    validation_data,
    validation_batch_size,
    validation_freq,
  ):
    """Keras's fit over the planned steps, each counted in the ledger (by the chief) first."""
    # First, so that epsilon is in the epoch logs every other callback (TensorBoard) sees.
    callbacks = [_LedgerCallback(self, steps)] + list(callbacks or [])
    with warnings.catch_warnings():
      # The sample stream ends exactly where the plan does, inside the last epoch.
      warnings.filterwarnings("ignore", message=_RAN_OUT_OF_DATA)
      # A plan shorter than an epoch shows (and Keras counts) its own steps, not an epoch's.
      return super().fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=min(self.plan.steps_per_epoch, steps),
        verbose=verbose,
        callbacks=callbacks,
        validation_data=validation_data,
        validation_batch_size=(
          None
          if isinstance(validation_data, tf.data.Dataset)
          else validation_batch_size or self.plan.batch_size
        ),
        validation_freq=validation_freq,
        shuffle=False,
      )

  def _segment_key(self) -> tf.Tensor:
    """A key per ledger segment: a restart that continues a ledger never replays its noise or
    samples, even with a fixed seed, and neither does a concurrent run with the same seed,
    which sees the same segments (its run id differs)."""
    return keys.stream_key(
      self._base_key, keys.text_word(self.privacy_ledger.run_id), len(self.privacy_ledger.segments)
    )

  def _replicas(self) -> int:
    """The replica count, after checking the plan can be split evenly across replicas."""
    replicas = self.distribute_strategy.num_replicas_in_sync
    if replicas > 1:
      if self.plan.num_microbatches is not None:
        raise ValueError(
          "microbatches cannot be split across replicas (a microbatch's mean "
          "must be clipped as a whole); use per-example clipping or one device"
        )
      if self.plan.physical_batch_size % replicas:
        raise ValueError(
          f"DPConfig.physical_batch_size ({self.plan.physical_batch_size}) must "
          f"be a multiple of the {replicas} replicas"
        )
    return replicas

  def _pad_multiple(self, replicas: int) -> int:
    """Logical batches are padded to a multiple of this (then cut into `replicas` slices)."""
    if self.jit_compile:
      return self.plan.physical_batch_size
    return _PAD_MULTIPLE_WITHOUT_XLA * replicas

  def _distributed_batches(self, data, first_step, last_step, replicas):
    """The steps' logical batches (`data.logical_batches`); with R replicas, each cut into R
    slices (sampling.replica_slices) and distributed by the model's strategy."""
    pad_multiple = self._pad_multiple(replicas)
    key = tf.constant(self._key.numpy())
    if replicas > 1:  # each replica draws its own noise in its step
      batches = data.logical_batches(
        self.plan, key, first_step, last_step, pad_multiple=pad_multiple
      )

      def this_workers_slices(context: tf.distribute.InputContext):
        local = replicas // context.num_input_pipelines
        return sampling.replica_slices(
          batches,
          last_step - first_step,
          replicas,
          first=context.input_pipeline_id * local,
          count=local,
        )

      return self.distribute_strategy.distribute_datasets_from_function(this_workers_slices)
    return data.logical_batches(
      self.plan,
      key,
      first_step,
      last_step,
      pad_multiple=pad_multiple,
      step_noise=self._pipeline_noise(key),
    )

  def _pipeline_noise(self, key):
    """step -> that step's noise, drawn in the input pipeline while the previous step trains
    (noise.host_gaussian_noise: the text classifier's 160k-value embedding took ~2 ms of CPU
    time per step from TensorFlow's sampler, more than a plain step); None for models whose
    noise would make every prefetched batch large (their steps draw it themselves)."""
    variables = self._taps.variables
    if sum(v.shape.num_elements() for v in variables) > _PIPELINE_NOISE_MAX_VALUES:
      return None
    return noise.host_gaussian_noise(
      variables, self.plan.noise_multiplier * self.plan.l2_norm_clip, key
    )

  def _prepare(self, data):
    """Fixes the plan and the ledger on the first fit; later fits must use the same data."""
    fingerprint, size = data.fingerprint, data.dataset_size
    if self.plan is None:
      if self._ledger_history is not None:
        # Under a policy that requires signatures, an unsigned record there is found now, not
        # by the evaluator after training.
        self.privacy_ledger = PrivacyLedger.open_history(
          self._ledger_history,
          size,
          fingerprint,
          self._privacy_unit,
          data_source=self._data_source,
          run_id=self._run_id,
          key=verification_key(self._policy) if self._policy is not None else None,
        )
      else:
        self.privacy_ledger = PrivacyLedger.open_for(
          self._ledger_path,
          size,
          fingerprint,
          self._privacy_unit,
          data_source=self._data_source,
          run_id=self._run_id,
          read_only=not workers.is_chief(self.distribute_strategy),
        )
      self.plan = self._plan_after(self.privacy_ledger, size)
    elif self.privacy_ledger.dataset_fingerprint != fingerprint:
      raise ValueError(
        "this DP model was trained on other data; its plan and ledger describe "
        "that data. Make a new DP model (and ledger) for new data"
      )
    if not self.model.built:
      self.model(data.example_batch(1)[0])
    self.built = True  # a wrapper around a built model (Keras saves only built models' weights)
    if self._taps is None or self._taps.static_shapes != bool(self.jit_compile):
      self._taps = clipping.GradientTaps(self.model, static_shapes=bool(self.jit_compile))

  def _plan_after(self, ledger: PrivacyLedger, size: int) -> TrainingPlan:
    """The plan for this run after what `ledger` already records: a target_epsilon is the
    total's, and the default delta is 1/N of the largest dataset the total covers."""
    config = self.dp_config
    if config.delta is None and ledger.largest_dataset_size > size:
      config = dataclasses.replace(config, delta=1.0 / ledger.largest_dataset_size)
    spent = ledger.dp_event() if ledger.noisy_steps else None
    return TrainingPlan.from_config(config, size, self.accountant, spent=spent)

  def _rehearse_step(self, data) -> None:
    """One forward and backward pass, with the metrics, on two examples of zeros: a loss with
    one value per batch, a model the taps refuse or metrics that do not fit the labels then fail
    here, before a counted step, and no private value is touched."""
    x, y = tf.nest.map_structure(np.zeros_like, data.example_batch(2))
    mask = tf.ones([len(y)])
    grads = self._taps.backward(x, y, self._loss_fn, mask)
    self.compute_metrics(x, y, grads.predictions, sample_weight=mask)
    self.reset_metrics()

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Keras builds a distributed model from the first training element, averaged across
    replicas: a collective every worker must join, and one that fails on a tuple of per-replica
    values under MultiWorkerMirroredStrategy (Keras 3.15). The DP model builds from two of the
    training examples instead (`_build_batch`, set by fit), on each worker by itself."""
    if iterator is not None:
      data_batch = self._build_batch
    super()._maybe_symbolic_build(data_batch=data_batch)

  def train_step(self, data):
    features, labels, mask, *step_noise = data
    record_metrics = lambda x, y, predictions, chunk_mask: self.compute_metrics(
      x, y, predictions, sample_weight=chunk_mask
    )
    gradients, loss_sum, examples = dp_step.noisy_gradients(
      self._taps,
      self._loss_fn,
      self.plan,
      features,
      labels,
      mask,
      self._key,
      self.noisy_steps,
      static_chunks=bool(self.jit_compile),
      on_chunk=record_metrics,
      step_noise=step_noise[0] if step_noise else None,
    )
    self.optimizer.apply_gradients(zip(gradients, self._taps.variables))
    self.noisy_steps.assign_add(1)
    self._loss_tracker.update_state(
      tf.math.divide_no_nan(loss_sum, examples), sample_weight=examples
    )
    self._nonfinite_units.update_state(tf.reduce_sum(mask) - examples)
    return self._reducible(self.get_metrics_result())

  def test_step(self, data):
    logs = super().test_step(data)
    logs.pop(NONFINITE_LOG_KEY, None)
    return self._reducible(logs)

  def _reducible(self, logs: dict) -> dict:
    """Keras 3.15 averages each log across workers with strategy.reduce(MEAN, log, axis=0),
    which fails on a scalar: on several workers each log gets an axis of one value."""
    if not workers.several(self.distribute_strategy):
      return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def make_private(
  model: keras.Model,
  config: DPConfig,
  *,
  ledger_path: Optional[str] = None,
  accountant: str = accounting.PLD,
  privacy_unit: str = EXAMPLE,
  ledger_history: Optional[str] = None,
  data_source: Optional[str] = None,
  run_id: Optional[str] = None,
  policy: Optional[PrivacyPolicy] = None,
) -> DPModel:
  """Returns a Keras model whose compile(optimizer, loss) + fit(x, y) run DP-SGD on `model`.

  Args:
    model: any Keras 3 model without layers that mix examples (BatchNormalization).
    config: the DP-SGD configuration (clip norm, noise or target epsilon, batch, steps...).
    ledger_path: a file where to keep the privacy ledger (rewritten every step; one process at a
      time); None keeps it in memory (`dp_model.privacy_ledger`, which you can `.save(path)`).
    accountant: "pld" (default) or "rdp".
    privacy_unit: what one training example stands for in the ledger ("example", "sequence").
    ledger_history: instead of ledger_path, a ledger history directory shared by every run on the
      data source, concurrent ones included (each run writes only its own segment files).
    data_source: a name for the data source, recorded in the ledger and listed in reports.
    run_id: this run's id in the ledger (default: a random one).
    policy: a PrivacyPolicy: `fit` then refuses, before any step, a run that the policy could
      never bless (the ledger with the run's planned steps fails it).
  """
  return DPModel(
    model,
    config,
    ledger_path=ledger_path,
    accountant=accountant,
    privacy_unit=privacy_unit,
    ledger_history=ledger_history,
    data_source=data_source,
    run_id=run_id,
    policy=policy,
  )
