"""PrivacyEvaluator executor: verify the ledger, decide against the policy, write the verdict.

Fails closed: every input problem (missing or edited ledger, impossible facts, a ledger for another
model, an unreadable policy, ...) becomes a NOT blessed verdict with the reason in the blessing,
the report and the log; an unexpected error still writes NOT blessed before it propagates.

The total judged is the ledger history's as it is at evaluation time: the DPTrainer's ledger is a
snapshot of the history when its run ended and names the history; every segment of the snapshot
must still be there (same facts, at least as many steps), and every segment there now counts,
including those of runs that finished later or are still training. So a concurrent run can never
make this verdict under-count, and a history with a malformed, edited, shortened or deleted
segment is refused. A ledger that names no history (e.g. written by `make_private` without one)
is judged on its own.

The history is also checked against what MLMD recorded of every earlier DPTrainer run of the
pipeline (`earlier_privacy_ledgers`, see components/earlier_runs.py): a segment deleted before
this run opened the history, or left in another history directory, is in no snapshot this
evaluation reads, but MLMD still lists it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from dp_tfx.audit.result import PrivacyAudit
from dp_tfx.components import artifacts, earlier_runs, ledger_records, specs
from dp_tfx.ledger import (
  LEDGER_FILE_NAME,
  LedgerError,
  PrivacyLedger,
  check_chain,
  directory_digest,
)
from dp_tfx.poisson_batches import BatchManifest
from dp_tfx.policy import PrivacyDecision, PrivacyPolicy, decide, verification_key
from dp_tfx.report import write_report


class Executor(base_executor.BaseExecutor):
  """Decides the blessing from the verified ledger only; never blesses by default."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    blessing = artifact_utils.get_single_instance(output_dict[specs.BLESSING_KEY])
    report = artifact_utils.get_single_instance(output_dict[specs.PRIVACY_REPORT_KEY])
    model = artifact_utils.get_single_instance(input_dict[specs.MODEL_KEY])
    policy = ledger = audit = None
    curve: list = []
    decision = PrivacyDecision()
    try:
      policy = PrivacyPolicy.from_json(exec_properties.get(specs.PRIVACY_POLICY_KEY))
      key = verification_key(policy)
      ledger = self._ledger(input_dict, key, self._pipeline_name())
      self._check_batches(input_dict, ledger, key)
      audit = self._audit(input_dict)
      decision = decide(
        policy,
        ledger,
        model_digest=self._model_digest(model),
        upstream_blessed=self._upstream_blessed(input_dict),
        audit=audit,
      )
      if ledger.noisy_steps and decision.epsilon is not None and math.isfinite(decision.epsilon):
        curve = ledger.epsilon_curve(decision.delta, policy.accountant)
    except (LedgerError, ValueError, ArithmeticError, RecursionError) as error:
      decision.blessed = False  # malformed or impossible facts: NOT blessed, with the reason
      decision.reasons.append(str(error))
    except BaseException as error:
      decision.blessed = False  # the NOT_BLESSED verdict is written before the error propagates
      decision.reasons.append(f"the evaluation failed: {error!r}")
      raise
    finally:
      self._write_blessing(blessing, model, decision)
    write_report(
      report.uri, decision, policy, ledger, curve, audit, self._mlmd_cross_check(input_dict)
    )
    # One verdict line either way, on stdout: absl logs INFO (a blessing) out of sight by default.
    print(f"PrivacyEvaluator: {decision.summary} (report: {report.uri})", flush=True)

  def _pipeline_name(self) -> Optional[str]:
    info = self._context.pipeline_info if self._context is not None else None
    return info.id if info is not None and info.id else None

  @staticmethod
  def _ledger(input_dict, key: Optional[bytes], pipeline: Optional[str] = None) -> PrivacyLedger:
    """The ledger artifact's file, verified against the content hash the DPTrainer recorded in
    MLMD (the file's own hash anyone can recompute; the trainer's record they cannot edit
    through the file), then against its ledger history, which is checked against what MLMD
    recorded of earlier runs; with every segment of the history now. With `key` (a policy
    that requires signatures), every record must be signed with it, this run's included."""
    artifact = artifact_utils.get_single_instance(input_dict[specs.PRIVACY_LEDGER_KEY])
    if key is not None:
      ledger_records.verify_record(artifact, key)
    ledger_records.check_origin(artifact, pipeline)
    ledger = PrivacyLedger.load(os.path.join(artifact.uri, LEDGER_FILE_NAME), key)
    if not artifact.has_custom_property(ledger_records.LEDGER_HASH_PROPERTY):
      raise LedgerError(
        "the DPTrainer recorded no content_hash for this ledger artifact in "
        "MLMD: its file cannot be checked against what training wrote"
      )
    recorded = artifact.get_string_custom_property(ledger_records.LEDGER_HASH_PROPERTY)
    if recorded != ledger.content_hash():
      raise LedgerError(
        "the ledger file's content_hash differs from the one the DPTrainer "
        "recorded in MLMD: the file was changed (and re-hashed) after training"
      )
    history = ledger.with_history(key)
    earlier_runs.check_earlier_runs(
      input_dict.get(specs.EARLIER_PRIVACY_LEDGERS_KEY) or [],
      history.segments,
      history.history_dir,
      key,
      pipeline,
      current=artifact,
    )
    check_chain(history.segments, history.history_dir)
    return history

  @staticmethod
  def _mlmd_cross_check(input_dict) -> str:
    """What the history was checked against in MLMD, for the report: said also where it could
    not be (no Resolver handed the earlier runs' ledgers over, as on Kubeflow V2)."""
    if specs.EARLIER_PRIVACY_LEDGERS_KEY not in input_dict:
      return (
        "not possible here: no earlier runs' PrivacyLedger artifacts reached the "
        "PrivacyEvaluator (on Kubeflow V2 the pipeline has no Resolver of several "
        "artifacts), so a segment deleted before any later run saw it would go unseen"
      )
    earlier = input_dict[specs.EARLIER_PRIVACY_LEDGERS_KEY] or []
    return (
      f"the history holds every segment of the {len(earlier)} DPTrainer run(s) of this "
      "pipeline that MLMD recorded"
    )

  @staticmethod
  def _check_batches(input_dict, ledger: PrivacyLedger, key: Optional[bytes]) -> None:
    """With the PoissonBatches the DPTrainer streamed: they are what PoissonBatchGen recorded in
    MLMD, and the ledger's runs on their draw are runs on them as they are (same N, q and steps;
    no step taken twice: BatchManifest.check_recorded_runs)."""
    batches = input_dict.get(specs.POISSON_BATCHES_KEY)
    if not batches:
      return
    artifact = artifact_utils.get_single_instance(batches)
    manifest = BatchManifest.load(artifact.uri)
    artifacts.check_batches_recorded(artifact, manifest, key)
    manifest.check_recorded_runs(ledger.segments)

  @staticmethod
  def _audit(input_dict) -> Optional[PrivacyAudit]:
    audits = input_dict.get(specs.PRIVACY_AUDIT_KEY)
    return PrivacyAudit.load(artifact_utils.get_single_uri(audits)) if audits else None

  @staticmethod
  def _model_digest(model) -> str:
    return directory_digest(path_utils.serving_model_dir(model.uri))

  @staticmethod
  def _upstream_blessed(input_dict) -> Optional[bool]:
    upstream = input_dict.get(specs.MODEL_BLESSING_KEY)
    if not upstream:
      return None
    # A verdict we cannot read (no "blessed" property) counts as NOT blessed.
    return model_utils.is_model_blessed(artifact_utils.get_single_instance(upstream))

  @staticmethod
  def _write_blessing(blessing, model, decision: PrivacyDecision) -> None:
    """The standard ModelBlessing Pusher reads, with epsilon, delta and reasons alongside."""
    blessed = bool(decision.blessed)
    name = (
      evaluator_constants.BLESSED_FILE_NAME
      if blessed
      else evaluator_constants.NOT_BLESSED_FILE_NAME
    )
    io_utils.write_string_file(os.path.join(blessing.uri, name), "")
    blessing.set_int_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
      evaluator_constants.BLESSED_VALUE if blessed else evaluator_constants.NOT_BLESSED_VALUE,
    )
    blessing.set_string_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri
    )
    blessing.set_int_custom_property(
      evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id
    )
    if decision.epsilon is not None and math.isfinite(decision.epsilon):
      blessing.set_float_custom_property(artifacts.EPSILON_PROPERTY, decision.epsilon)
    if decision.delta is not None:
      blessing.set_float_custom_property(artifacts.DELTA_PROPERTY, decision.delta)
    if decision.empirical_epsilon_lower_bound is not None:
      blessing.set_float_custom_property(
        artifacts.LOWER_BOUND_PROPERTY, decision.empirical_epsilon_lower_bound
      )
    blessing.set_string_custom_property(artifacts.REASON_PROPERTY, decision.summary)
