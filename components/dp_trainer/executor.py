"""DPTrainer executor: read the examples, train with dp_tfx.make_private, export, seal the ledger.

The user module's contract and context are in `components/user_module.py`; reading the examples
and exporting the model, shared with the non-private control and the auditor, in `model_io.py`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import keras
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from dp_tfx import budget, files, signing, workers
from dp_tfx.components import artifacts, earlier_runs, ledger_records, specs
from dp_tfx.components.model_io import (
  evaluate_metrics,
  examples_dataset,
  export_serving_model,
  read_examples,
  record_eval_metrics,
  records_digest,
  split_file_patterns,
  splits,
)
from dp_tfx.components.user_module import MODULE_FUNCTIONS, PRIVACY_UNIT_FUNCTION, trainer_context
from dp_tfx.config import DPConfig
from dp_tfx.keras import make_private
from dp_tfx.ledger import (
  EXAMPLE,
  LEDGER_FILE_NAME,
  LedgerError,
  dataset_fingerprint,
  directory_digest,
  new_run_id,
  read_history,
)
from dp_tfx.poisson_batches import PoissonBatchStream
from dp_tfx.policy import PrivacyPolicy, verification_key
from dp_tfx.resume import StepCheckpoint

EVAL_METRIC_PREFIX = "eval_"
# Beside the DPTrainer's output artifacts: the weights a streamed run had reached, per draw.
CHECKPOINTS_DIR = "checkpoints"
COLLECTIVE_TIMEOUT_SECONDS = 600


class Executor(base_executor.BaseExecutor):
  """Trains with DP-SGD; writes model, model_run and privacy_ledger."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    # First: several workers' collective ops must be set up before TensorFlow runs anything.
    strategy = self._strategy()
    chief = workers.is_chief(strategy)
    config = DPConfig.from_json(exec_properties[specs.DP_CONFIG_KEY])
    policy_json = exec_properties.get(specs.PRIVACY_POLICY_KEY)
    policy = PrivacyPolicy.from_json(policy_json) if policy_json else None
    ledger_artifact = artifact_utils.get_single_instance(output_dict[specs.PRIVACY_LEDGER_KEY])
    # Every run on the data source records its steps in one ledger history, each in segment
    # files of its own, so concurrent runs never lose each other's steps; by default the data
    # source's budget under the budget root, which no output dir, pipeline root or component id
    # decides (dp_tfx.budget). Every run recorded there composes with every other.
    data_source = exec_properties.get(specs.DATA_SOURCE_KEY) or self._default_data_source()
    budget_root = exec_properties.get(specs.BUDGET_ROOT_KEY) or budget.default_budget_root()
    explicit_history = exec_properties.get(specs.LEDGER_HISTORY_DIR_KEY)
    history_dir = explicit_history or budget.history_dir(budget_root, data_source)
    # Before anything is read or spent: the PrivacyEvaluator refuses a history that lacks what
    # MLMD recorded of an earlier run, so a run on it would spend for nothing (earlier_runs.py).
    earlier_runs.check_history(
      input_dict.get(specs.EARLIER_PRIVACY_LEDGERS_KEY) or [],
      history_dir,
      verification_key(policy) if policy else None,
      self._pipeline_name(),
    )
    context = trainer_context(input_dict, exec_properties)
    module = {name: udf_utils.get_fn(exec_properties, name) for name in MODULE_FUNCTIONS}
    privacy_unit_fn = udf_utils.try_get_fn(exec_properties, PRIVACY_UNIT_FUNCTION)
    examples = artifact_utils.get_single_instance(input_dict[specs.EXAMPLES_KEY])
    spec = module["feature_spec"](context)
    train_split, eval_split = splits(exec_properties)
    training_data = self._training_data(
      input_dict, examples, train_split, spec, module["decode"], context
    )
    eval_data = examples_dataset(
      split_file_patterns(examples, eval_split), spec, module["decode"], context
    )

    if chief:
      self._check_budget(
        history_dir,
        None if explicit_history else budget_root,
        data_source,
        training_data,
        split_file_patterns(examples, train_split),
      )

    model_run = artifact_utils.get_single_instance(output_dict[specs.MODEL_RUN_KEY])
    model_artifact = artifact_utils.get_single_instance(output_dict[specs.MODEL_KEY])
    artifact_ledger_path = os.path.join(ledger_artifact.uri, LEDGER_FILE_NAME)
    with strategy.scope():
      keras_model = module["build_model"](context)
      dp_model = make_private(
        keras_model,
        config,
        ledger_history=history_dir,
        data_source=data_source,
        run_id=self._run_id(),
        privacy_unit=privacy_unit_fn(context) if privacy_unit_fn else EXAMPLE,
        policy=policy,
      )  # a run the policy could never bless is refused before its first step
      dp_model.compile(**module["compile_kwargs"](context))
    callbacks = [keras.callbacks.TensorBoard(log_dir=model_run.uri)] if chief else []
    if isinstance(training_data[0], PoissonBatchStream):
      # A killed run's restart goes on at the draw's next unused step: with these weights.
      callbacks.append(
        StepCheckpoint(
          os.path.join(
            os.path.dirname(os.path.dirname(model_artifact.uri.rstrip("/"))), CHECKPOINTS_DIR
          )
        )
      )
    dp_model.fit(*training_data, validation_data=eval_data, verbose=2, callbacks=callbacks)
    if not chief:
      # Every worker evaluates (a collective step); only the chief writes.
      evaluate_metrics(dp_model, eval_data)
      logging.info(
        "DPTrainer: this worker's part is done; the chief writes the model, the "
        "metrics and the ledger"
      )
      return
    metrics = record_eval_metrics(dp_model, eval_data, model_run.uri)
    for name, value in metrics.items():
      model_artifact.set_float_custom_property(EVAL_METRIC_PREFIX + name, value)
    serving_dir = path_utils.serving_model_dir(model_artifact.uri)
    export_serving_model(keras_model, spec, module["decode"], context, serving_dir)
    ledger = dp_model.privacy_ledger
    try:
      ledger.refresh()  # every run in the history now, concurrent ones included
    except LedgerError as error:
      # Training is over; the PrivacyEvaluator reads the history again and refuses it, with this
      # reason, rather than the pipeline failing here without a verdict.
      logging.warning("DPTrainer: the ledger history cannot be read again: %s", error)
    ledger.set_model_digest(directory_digest(serving_dir))
    # This run's artifact: a self-contained snapshot of the history, naming it; the
    # PrivacyEvaluator checks it against the history and judges the history's total then.
    ledger.save(artifact_ledger_path)
    # In MLMD beside the file: its content hash, the history and the snapshot's segments (what a
    # later PrivacyEvaluator checks that history against; see ledger_records.record_ledger).
    ledger_records.record_ledger(ledger_artifact, ledger, self._record_origin(ledger_artifact))
    epsilon = dp_model.epsilon()
    for target in (ledger_artifact, model_artifact):
      artifacts.record_privacy_facts(target, ledger, dp_model.plan, epsilon)
    logging.info(
      "DPTrainer: %d noisy steps, epsilon %.4f at delta %.3g; ledger %s",
      ledger.noisy_steps,
      epsilon,
      dp_model.plan.delta,
      ledger.path,
    )

  @staticmethod
  def _training_data(input_dict, examples, train_split, spec, decode, context) -> tuple:
    """fit's (x, y): the PoissonBatchGen's batches as a stream when given (read a step at a
    time), else the train split in memory."""
    batches = input_dict.get(specs.POISSON_BATCHES_KEY)
    if batches:
      artifact = artifact_utils.get_single_instance(batches)
      stream = PoissonBatchStream(
        artifact.uri, lambda serialized: decode(tf.io.parse_example(serialized, spec), context)
      )
      _check_batches_describe(stream, artifact, examples, train_split)
      logging.info(
        "DPTrainer: streaming the Poisson batches of %d training examples from %s",
        stream.dataset_size,
        artifact.uri,
      )
      return stream, None
    x_train, y_train = read_examples(
      split_file_patterns(examples, train_split), spec, decode, context
    )
    logging.info("DPTrainer: %d training examples, in memory", len(y_train))
    return x_train, y_train

  @staticmethod
  def _strategy() -> tf.distribute.Strategy:
    """Several workers when TF_CONFIG names them (as Vertex AI and Kubeflow training jobs set
    it: MultiWorkerMirroredStrategy, see dp_tfx.workers); else every GPU present
    (MirroredStrategy); else the default. Noise is split across all replicas."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker")) > 1:
      # A worker that stops taking part without exiting (its peers would wait for it in a
      # collective forever) ends the run after this long.
      strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
          timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS
        )
      )
      logging.info(
        "DPTrainer: training on %d replicas of several workers (this one: %s)",
        strategy.num_replicas_in_sync,
        "the chief" if workers.is_chief(strategy) else "not the chief",
      )
      return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
      logging.info("DPTrainer: training on %d GPUs", len(gpus))
      return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()

  @staticmethod
  def _check_budget(
    history_dir: str,
    budget_root: Optional[str],
    data_source: str,
    training_data: tuple,
    train_patterns: List[str],
  ) -> None:
    """Before anything is spent: refuses data that another data source of the budget root
    already trained on (a new name never opens a fresh budget for the same data), and says in
    one line when this run is the first in its budget."""
    if budget_root is not None:
      stream, labels = training_data
      if isinstance(stream, PoissonBatchStream):
        fingerprint, data_digest = stream.fingerprint, stream.manifest.data_digest
      else:
        fingerprint = dataset_fingerprint(stream, labels)
        data_digest = records_digest(train_patterns)
      budget.refuse_data_budgeted_elsewhere(budget_root, data_source, fingerprint)
      budget.claim_data(budget_root, data_source, data_digest)
    if not (files.is_dir(history_dir) and read_history(history_dir)):
      started = budget.fresh_start(history_dir)
      logging.warning(
        "DPTrainer: no earlier run in the privacy budget of %r (%s): this run is its first%s",
        data_source,
        history_dir,
        f" (a new budget, started by {started['requested_by']}: {started['reason']})"
        if started
        else "",
      )

  def _default_data_source(self) -> str:
    """The pipeline's name: its runs share one budget, wherever their pipeline root is."""
    name = self._pipeline_name()
    return f"pipeline {name}" if name else "unnamed"

  def _pipeline_name(self) -> Optional[str]:
    info = self._context.pipeline_info if self._context is not None else None
    return info.id if info is not None and info.id else None

  def _record_origin(self, ledger_artifact: types.Artifact) -> ledger_records.RecordOrigin:
    """The artifact the MLMD record is written for, and who wrote it (signed with the record)."""
    node = self._context.pipeline_node if self._context is not None else None
    return ledger_records.RecordOrigin(
      uri=ledger_artifact.uri,
      pipeline=self._pipeline_name(),
      pipeline_run_id=(self._context.pipeline_run_id or None) if self._context else None,
      component=(node.node_info.id or None) if node is not None else None,
    )

  def _run_id(self) -> str:
    """The pipeline run's id with a random suffix (two runs may start in the same instant)."""
    run = self._context.pipeline_run_id if self._context is not None else None
    return f"{run}-{new_run_id()[:6]}" if run else new_run_id()


def _check_batches_describe(
  stream: PoissonBatchStream, artifact: types.Artifact, examples: types.Artifact, train_split: str
) -> None:
  """The batches are what PoissonBatchGen recorded in MLMD (artifacts.check_batches_recorded,
  with the ledger key when one is set), drawn from this run's examples and split: batches drawn
  from other examples would train on samples the ledger does not describe."""
  artifacts.check_batches_recorded(artifact, stream.manifest, signing.configured_key())
  manifest = stream.manifest
  if (manifest.source, manifest.split) != (examples.uri, train_split):
    raise ValueError(
      f"the Poisson batches in {artifact.uri} were drawn from split "
      f"{manifest.split!r} of {manifest.source}; this DPTrainer trains on split "
      f"{train_split!r} of {examples.uri}"
    )
