"""PrivacyAuditor executor: attack the exported model, measure canary exposure, write audit.json.

Everything is measured through the model's serving signature (the exact files that would be
pushed) and the module's own loss, so the audit sees what a deployed model gives away.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from dp_tfx.audit import canaries as canary_lib
from dp_tfx.audit.disagreement import most_disagreeing
from dp_tfx.audit import exposure as exposure_lib
from dp_tfx.audit.membership import loss_threshold_attack
from dp_tfx.audit.result import CanaryResult, ModelAudit, PrivacyAudit
from dp_tfx.components import artifacts, specs
from dp_tfx.components.model_io import (
  SERVING_EXAMPLES_KEY,
  example_records,
  split_file_patterns,
  splits,
)
from dp_tfx.components.user_module import TrainerContext, trainer_context
from dp_tfx.keras import per_example_loss
from dp_tfx.ledger import directory_digest

DEFAULT_MAX_EXAMPLES = 1000
# The held-out metrics (the module's held_out_metrics) are computed on up to this many eval
# examples: the whole eval split of the examples here, a uniform sample of a larger one.
HELD_OUT_METRIC_EXAMPLES = 10_000
CONFIDENCE = 0.95
_SCORING_BATCH = 1024
_SEED = 0  # which examples are attacked; fixed so that an audit can be repeated exactly


class Executor(base_executor.BaseExecutor):
  """Audits the DP model (and the control, if given) and writes a PrivacyAudit artifact."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    context = trainer_context(input_dict, exec_properties)
    module = _UserModule.load(exec_properties)
    examples = artifact_utils.get_single_instance(input_dict[specs.EXAMPLES_KEY])
    train_split, eval_split = splits(exec_properties)
    max_examples = exec_properties.get(specs.MAX_EXAMPLES_KEY) or DEFAULT_MAX_EXAMPLES
    canary_format, canaries = _canaries(exec_properties.get(specs.CANARY_FILE_KEY))
    canary_records = module.canary_records(canary_format, canaries, context) if canaries else []
    rng = np.random.default_rng(_SEED)
    # One pass over each split, holding samples only: members without the canaries' copies (a
    # canary repeated r times is a group of r privacy units, not one), counted as they pass.
    members = _SplitSample.draw(examples, train_split, max_examples, rng, skip=canary_records)
    _check_canary_copies(members.skipped, canary_records, canaries)
    held_out = _SplitSample.draw(
      examples, eval_split, max(max_examples, HELD_OUT_METRIC_EXAMPLES), rng
    )
    delta = exec_properties.get(specs.DELTA_KEY) or 1.0 / (
      members.count + sum(members.skipped.values())
    )
    sample_size = min(max_examples, members.count, held_out.count)
    if sample_size < 4:
      raise ValueError(
        f"the audit needs at least 4 training and 4 eval examples; the splits hold "
        f"{members.count} (without canary copies) and {held_out.count}"
      )
    member_indices = rng.choice(len(members.records), sample_size, replace=False)
    attacked_members = members.records[member_indices]
    attacked_non_members = held_out.records[
      rng.choice(len(held_out.records), sample_size, replace=False)
    ]

    def audit(model_artifact) -> Tuple[ModelAudit, np.ndarray]:
      """The model's audit, and its losses on the attacked members."""
      scorer = _ModelScorer(model_artifact, module, context)
      member_losses = scorer.losses(attacked_members)
      membership = loss_threshold_attack(
        member_losses,
        scorer.losses(attacked_non_members),
        delta=delta,
        confidence=CONFIDENCE,
        seed=_SEED,
      )
      return ModelAudit(
        membership=membership,
        canaries=scorer.canary_results(canary_format, canaries),
        held_out_metrics=scorer.held_out_metrics(held_out.records),
      ), member_losses

    model = artifact_utils.get_single_instance(input_dict[specs.MODEL_KEY])
    model_audit, model_losses = audit(model)
    control_audit, disagreements = None, []
    if input_dict.get(specs.CONTROL_MODEL_KEY):
      control_audit, control_losses = audit(
        artifact_utils.get_single_instance(input_dict[specs.CONTROL_MODEL_KEY])
      )
      disagreements = most_disagreeing(
        members.positions[member_indices],
        model_losses,
        control_losses,
        texts=module.texts(attacked_members, context),
      )
    result = PrivacyAudit(
      model_digest=directory_digest(path_utils.serving_model_dir(model.uri)),
      delta=delta,
      confidence=CONFIDENCE,
      model=model_audit,
      control=control_audit,
      canary_format=dataclasses.asdict(canary_format) if canary_format else None,
      disagreements=disagreements,
    )
    output = artifact_utils.get_single_instance(output_dict[specs.PRIVACY_AUDIT_KEY])
    result.save(output.uri)
    bound = result.empirical_epsilon_lower_bound()
    output.set_float_custom_property(artifacts.LOWER_BOUND_PROPERTY, bound)
    output.set_float_custom_property(artifacts.AUDIT_DELTA_PROPERTY, delta)
    logging.info(
      "PrivacyAuditor: %d members vs %d non-members, empirical epsilon >= %.3f "
      "(%.0f%% confidence, delta %.3g); canary exposure by repetitions %s",
      sample_size,
      sample_size,
      bound,
      100 * CONFIDENCE,
      delta,
      result.model.exposure_by_repetitions(),
    )


@dataclasses.dataclass(frozen=True)
class _SplitSample:
  """Up to `size` records of a split drawn uniformly without replacement, in one pass that holds
  only the sample (reservoir sampling, Algorithm R: the auditor reads TFRecords directly, outside
  any Beam pipeline), with their positions in the split (file order, skipped records not
  counted), how many records were eligible, and how often each skipped record occurred."""

  records: np.ndarray
  positions: np.ndarray
  count: int
  skipped: collections.Counter

  @classmethod
  def draw(
    cls, examples, split: str, size: int, rng: np.random.Generator, skip: Sequence[bytes] = ()
  ) -> "_SplitSample":
    skip = frozenset(skip)
    records, positions, skipped, count = [], [], collections.Counter(), 0
    for batch in (
      example_records(split_file_patterns(examples, split))
      .batch(_SCORING_BATCH)
      .as_numpy_iterator()
    ):
      for record in batch:
        if record in skip:
          skipped[record] += 1
          continue
        if count < size:
          records.append(record)
          positions.append(count)
        else:
          slot = rng.integers(0, count + 1)
          if slot < size:
            records[slot], positions[slot] = record, count
        count += 1
    return cls(np.array(records, dtype=object), np.array(positions, dtype=np.int64), count, skipped)


def _canaries(canary_file: Optional[str]):
  if not canary_file:
    return None, []
  return canary_lib.load_canaries(canary_file)


def _check_canary_copies(found: collections.Counter, canary_records: List[bytes], canaries) -> None:
  """Each canary is in the train split as often as the canary file says.

  A canary file that does not describe this data (regenerated data, another seed, a wrong path)
  would measure secrets the model never saw and pass any exposure limit, so it is refused.
  """
  for canary, record in zip(canaries, canary_records):
    if found[record] != canary.repetitions:
      raise ValueError(
        f"the canary file does not describe the training data: canary "
        f"{canary.secret!r} is in the train split {found[record]} times, the file "
        f"says {canary.repetitions}"
      )


@dataclasses.dataclass(frozen=True)
class _UserModule:
  """The user module's functions the audit uses (the DPTrainer's module)."""

  feature_spec: Callable
  decode: Callable
  compile_kwargs: Callable
  canary_examples: Optional[Callable]
  held_out_metrics: Optional[Callable]
  example_text: Optional[Callable]

  @classmethod
  def load(cls, exec_properties) -> "_UserModule":
    required = {
      name: udf_utils.get_fn(exec_properties, name)
      for name in ("feature_spec", "decode", "compile_kwargs")
    }
    optional = {
      name: udf_utils.try_get_fn(exec_properties, name)
      for name in ("canary_examples", "held_out_metrics", "example_text")
    }
    return cls(**required, **optional)

  def texts(self, serialized: np.ndarray, context) -> Optional[List[str]]:
    """The examples as the module's `example_text(parsed_features, context)` renders them (None
    without one): what a reader of the disagreements sees."""
    if self.example_text is None:
      return None
    parsed = tf.io.parse_example(
      tf.constant(list(serialized), dtype=tf.string), self.feature_spec(context)
    )
    return [str(text) for text in self.example_text(parsed, context)]

  def canary_records(self, canary_format, canaries, context) -> List[bytes]:
    if self.canary_examples is None:
      raise ValueError(
        "a canary file was given, but the module has no canary_examples(texts, "
        "context) to turn canary texts into examples"
      )
    return list(self.canary_examples([canary_format.text(c.secret) for c in canaries], context))


class _ModelScorer:
  """Per-example losses and outputs of one exported model, computed in batches."""

  def __init__(self, model_artifact, module: _UserModule, context: TrainerContext):
    serving_dir = path_utils.serving_model_dir(model_artifact.uri)
    self._serve = tf.saved_model.load(serving_dir).signatures["serving_default"]
    self._module = module
    self._feature_spec = module.feature_spec(context)
    self._loss = per_example_loss(module.compile_kwargs(context)["loss"])
    self._context = context

  def _batches(self, serialized: np.ndarray):
    for start in range(0, len(serialized), _SCORING_BATCH):
      batch = tf.constant(list(serialized[start : start + _SCORING_BATCH]), dtype=tf.string)
      outputs = self._serve(**{SERVING_EXAMPLES_KEY: batch})["outputs"]
      _, labels = self._module.decode(tf.io.parse_example(batch, self._feature_spec), self._context)
      yield labels, outputs

  def losses(self, serialized: np.ndarray) -> np.ndarray:
    return np.concatenate(
      [self._loss(labels, outputs).numpy() for labels, outputs in self._batches(serialized)]
    )

  def held_out_metrics(self, serialized: np.ndarray) -> Dict[str, float]:
    if self._module.held_out_metrics is None:
      return {}
    pairs = list(self._batches(serialized))
    labels = np.concatenate([np.asarray(labels) for labels, _ in pairs])
    outputs = np.concatenate([np.asarray(outputs) for _, outputs in pairs])
    return {
      name: float(value)
      for name, value in self._module.held_out_metrics(labels, outputs, self._context).items()
    }

  def canary_results(self, canary_format, canaries) -> List[CanaryResult]:
    if not canaries:
      return []

    def score(texts: List[str]) -> np.ndarray:
      return self.losses(np.array(self._module.canary_examples(texts, self._context), dtype=object))

    measured = exposure_lib.exposures(
      score,
      canary_format.prefix,
      canary_format.digits,
      [c.secret for c in canaries],
      progress=_progress_logger("PrivacyAuditor: scored %d of %d canary candidates"),
    )
    return [CanaryResult(repetitions=c.repetitions, exposure=e) for c, e in zip(canaries, measured)]


def _progress_logger(message: str) -> Callable[[int, int], None]:
  """Logs each tenth of a long enumeration once."""
  logged_tenths = set()

  def log(done: int, total: int) -> None:
    tenth = done * 10 // total
    if tenth not in logged_tenths:
      logged_tenths.add(tenth)
      logging.info(message, done, total)

  return log
