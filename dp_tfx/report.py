"""The privacy report: report.json, a plot of epsilon over training steps, and a short summary;
and what `dp-tfx report` says of a ledger (`ledger_summary`).

Every number in it comes from `policy.decide`, the verified ledger and the PrivacyAuditor's
measurements (whose lower bound is recomputed at the decision's delta from the attack counts).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import TYPE_CHECKING, Optional

from dp_tfx import accounting, budget, files, json_output
from dp_tfx.audit.membership import epsilon_lower_bound
from dp_tfx.ledger import PrivacyLedger, check_chain
from dp_tfx.policy import PrivacyDecision, PrivacyPolicy

if TYPE_CHECKING:
  from dp_tfx.audit.result import ModelAudit, PrivacyAudit

REPORT_FILE = "report.json"
PLOT_FILE = "epsilon.png"
EXPOSURE_PLOT_FILE = "exposure.png"
SUMMARY_FILE = "summary.txt"


def ledger_with_history(path, key: Optional[bytes]) -> tuple:
  """(the snapshot at `path`, the ledger of its history now): the snapshot checked against its
  ledger history, with every run recorded there since, as the PrivacyEvaluator reads them.

  Raises:
    LedgerError: for a snapshot or history that fails its checks (hashes, signatures with `key`).
  """
  snapshot = PrivacyLedger.load(path, key)
  return snapshot, snapshot.with_history(key)


def ledger_summary(ledger: PrivacyLedger, delta: Optional[float], accountant: str) -> dict:
  """What `dp-tfx report` says of a ledger: its facts and epsilon at `delta` (default 1/N over
  the largest dataset the total covers), with the accountant's reason where epsilon is infinite.

  Raises:
    LedgerError: where the history's chain names a segment that is missing or shortened.
  """
  check_chain(ledger.segments, ledger.history_dir)
  delta = delta if delta is not None else 1.0 / ledger.largest_dataset_size
  epsilon = ledger.epsilon(delta, accountant)
  reason = None
  if not math.isfinite(epsilon):
    reason = accounting.epsilon_result(ledger.dp_event(), delta, accountant).reason
  return {
    "dataset_size": ledger.dataset_size,
    "privacy_unit": ledger.privacy_unit,
    "noisy_steps": ledger.noisy_steps,
    "segments": len(ledger.segments),
    "runs": len(ledger.runs()),
    "history": ledger.history_dir,
    "rigorous": ledger.rigorous,
    "delta": delta,
    "accountant": accountant,
    "epsilon": epsilon,
    "epsilon_infinite": not math.isfinite(epsilon),
    "epsilon_reason": reason,
    "content_hash": ledger.content_hash(),
  }


def _json_number(value):
  return None if value is None or not math.isfinite(value) else value


def build_report(
  decision: PrivacyDecision,
  policy: Optional[PrivacyPolicy],
  ledger: Optional[PrivacyLedger],
  curve: list,
  audit: Optional["PrivacyAudit"] = None,
  mlmd_cross_check: Optional[str] = None,
) -> dict:
  """The report as a dict: the decision, the policy, the ledger's facts, the epsilon curve, the
  empirical audit (if one ran) and what the history was checked against in MLMD."""
  report = {
    "decision": decision.to_dict(),
    "epsilon": _json_number(decision.epsilon),
    "epsilon_is_infinite": decision.epsilon is not None and math.isinf(decision.epsilon),
    "delta": decision.delta,
    "policy": json.loads(policy.to_json()) if policy else None,
    "epsilon_curve": [{"step": s, "epsilon": _json_number(e)} for s, e in curve],
    "mlmd_cross_check": mlmd_cross_check,
  }
  if ledger is not None:
    report["ledger"] = {
      "facts": ledger.body(),
      "content_hash": ledger.content_hash(),
      "noisy_steps": ledger.noisy_steps,
      "privacy_unit": ledger.privacy_unit,
      "rigorous": ledger.rigorous,
      "history_dir": ledger.history_dir,
      "runs": ledger.runs(),
      "first_run_in_budget": len(ledger.runs()) == 1,
      "budget_started": (budget.fresh_start(ledger.history_dir) if ledger.history_dir else None),
    }
    if not ledger.rigorous:
      report["note"] = (
        "training used shuffled fixed-size batches; the epsilon is computed as if "
        "batches were Poisson-sampled and is not a rigorous bound"
      )
  if audit is not None and ledger is not None and audit.model_digest != ledger.model_digest:
    report["audit_rejected"] = "the privacy audit measured another model; its numbers are not shown"
  elif audit is not None:
    delta = audit.delta if decision.delta is None else decision.delta
    report["audit"] = _audit_section(audit.model, delta, audit.confidence)
    report["audit"].update(model_digest=audit.model_digest, canary_format=audit.canary_format)
    if audit.control is not None:
      report["audit"]["control"] = _audit_section(audit.control, delta, audit.confidence)
      report["audit"]["disagreements"] = [d.to_dict() for d in audit.disagreements]
  return report


def _audit_section(model_audit: "ModelAudit", delta: float, confidence: float) -> dict:
  """One model's audit: the attack with its counts, the lower bound, and the canary table."""
  membership = model_audit.membership
  bound = membership.lower_bound(delta, confidence)
  counts = membership.counts
  # The most these sample sizes can ever show (every member and no non-member called a member):
  # a ledger epsilon above it cannot be contradicted by this audit.
  largest = epsilon_lower_bound(
    dataclasses.replace(counts, true_positives=counts.positives, false_positives=0),
    delta,
    confidence,
  ).epsilon
  section = model_audit.to_dict()  # canaries, canary_exposure, held_out_metrics
  del section["membership"]
  section.update(
    attack=membership.attack,
    threshold=membership.threshold,
    counts=counts.to_dict(),
    threshold_selection_counts=membership.selection_counts.to_dict(),
    empirical_epsilon_lower_bound=bound.epsilon,
    lower_bound=bound.to_dict(),
    largest_provable_epsilon=largest,
  )
  return section


def write_report(
  directory,
  decision: PrivacyDecision,
  policy: Optional[PrivacyPolicy],
  ledger: Optional[PrivacyLedger],
  curve: list,
  audit: Optional["PrivacyAudit"] = None,
  mlmd_cross_check: Optional[str] = None,
) -> str:
  """Writes report.json, summary.txt, epsilon.png (when there is a curve) and exposure.png (when
  the audit measured canaries) under `directory` (local or a URL such as gs://)."""
  directory = os.fspath(directory)
  report = build_report(decision, policy, ledger, curve, audit, mlmd_cross_check)
  files.write_text(
    os.path.join(directory, REPORT_FILE), json_output.dumps(report, indent=2, sort_keys=True)
  )
  files.write_text(
    os.path.join(directory, SUMMARY_FILE),
    _summary(decision, policy, ledger, report.get("audit")) + "\n",
  )
  if curve:
    _plot(os.path.join(directory, PLOT_FILE), curve, policy)
  if audit is not None and audit.model.canaries:
    _plot_exposure(os.path.join(directory, EXPOSURE_PLOT_FILE), audit)
  return directory


def _summary(decision, policy, ledger, audit_section: Optional[dict]) -> str:
  lines = [decision.summary]
  if decision.epsilon is not None:
    lines.append(
      f"epsilon = {decision.epsilon:.4g} at delta = {decision.delta:.3g}"
      + (
        f" ({policy.accountant} accountant; policy max_epsilon {policy.max_epsilon:g})"
        if policy
        else ""
      )
    )
  if ledger is not None:
    mine = [s for s in ledger.segments if s.run_id == ledger.run_id] or ledger.segments
    segment = mine[-1] if mine else None
    lines.append(
      f"{ledger.noisy_steps} noisy steps on {ledger.dataset_size} "
      f"{ledger.privacy_unit}s"
      + (
        f"; sampling {segment.sampling} q={segment.sampling_rate:.4g}, "
        f"sigma={segment.noise_multiplier:g}, C={segment.l2_norm_clip:g}"
        if segment
        else ""
      )
    )
    runs = ledger.runs()
    if len(runs) > 1 or ledger.history_dir:
      lines.append(
        f"the total composes {len(runs)} run(s)"
        + (f" recorded in {ledger.history_dir}" if ledger.history_dir else "")
        + ":"
      )
      lines.extend(
        f"  run {run['run_id']}{' (this run)' if run['this_run'] else ''}: "
        f"{run['noisy_steps']} of {run['planned_steps']} planned steps on "
        f"{'/'.join(str(n) for n in run['dataset_sizes'])} {ledger.privacy_unit}s of "
        f"{run['data_source'] or 'an unnamed data source'}, started {run['started_at']}"
        for run in runs
      )
  if audit_section is not None:
    lines.append(_audit_line("audit", audit_section))
    if audit_section.get("control"):
      lines.append(_audit_line("non-private control", audit_section["control"]))
    disagreements = audit_section.get("disagreements") or []
    if disagreements:
      lines.append(
        f"training examples the control finds likelier than the DP model, by the most "
        f"(loss DP vs control; {min(_SUMMARY_DISAGREEMENTS, len(disagreements))} of "
        f"{len(disagreements)} in "
        f"report.json):"
      )
      lines.extend(_disagreement_line(d) for d in disagreements[:_SUMMARY_DISAGREEMENTS])
  return "\n".join(lines)


_SUMMARY_DISAGREEMENTS = 5
_SUMMARY_TEXT_CHARACTERS = 70


def _disagreement_line(disagreement: dict) -> str:
  text = disagreement["text"]
  shown = (
    repr(text if len(text) <= _SUMMARY_TEXT_CHARACTERS else text[:_SUMMARY_TEXT_CHARACTERS] + "...")
    if text is not None
    else f"training record {disagreement['record']}"
  )
  return f"  {disagreement['model_loss']:.3g} vs {disagreement['control_loss']:.3g}: {shown}"


def _audit_line(name: str, section: dict) -> str:
  counts = section["counts"]
  line = (
    f"{name}: {section['attack']} attack on {counts['positives']} members / "
    f"{counts['negatives']} non-members: empirical epsilon >= "
    f"{section['empirical_epsilon_lower_bound']:.3g} "
    f"({100 * section['lower_bound']['confidence']:.0f}% confidence; these sample sizes "
    f"can show at most {section['largest_provable_epsilon']:.3g})"
  )
  if section["canary_exposure"]:
    line += "; canary exposure (bits) by repetitions: " + ", ".join(
      f"{r}x {e:.2f}" if r != "0" else f"never {e:.2f}"
      for r, e in section["canary_exposure"].items()
    )
  if section["held_out_metrics"]:
    line += "; held out: " + ", ".join(
      f"{k} {v:.4g}" for k, v in sorted(section["held_out_metrics"].items())
    )
  return line


def _plot(path, curve, policy) -> None:
  import matplotlib

  matplotlib.use("Agg")  # files only; no display here
  from matplotlib import pyplot

  figure, axes = pyplot.subplots(figsize=(6, 4))
  steps = [s for s, _ in curve]
  axes.plot(steps, [e for _, e in curve], marker="o", label="epsilon (from the ledger)")
  if policy is not None:
    axes.axhline(
      policy.max_epsilon,
      color="red",
      linestyle="--",
      label=f"policy max_epsilon = {policy.max_epsilon:g}",
    )
  top = max([e for _, e in curve] + ([policy.max_epsilon] if policy else []))
  axes.set_ylim(0, 1.1 * top)  # keep the policy line inside the plot
  axes.set_xlabel("noisy steps")
  axes.set_ylabel("epsilon")
  axes.set_title("Privacy spent during training")
  axes.legend()
  figure.tight_layout()
  _save_figure(figure, path)


def _plot_exposure(path, audit: "PrivacyAudit") -> None:
  """Mean canary exposure by repetition count, the DP model beside the non-private control."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot

  models = [("DP model", audit.model)] + (
    [("non-private control", audit.control)] if audit.control is not None else []
  )
  repetitions = sorted({r for _, m in models for r in m.exposure_by_repetitions()})
  width = 0.8 / len(models)
  figure, axes = pyplot.subplots(figsize=(6, 4))
  for index, (name, model_audit) in enumerate(models):
    by_repetitions = model_audit.exposure_by_repetitions()
    axes.bar(
      [i + index * width for i in range(len(repetitions))],
      [by_repetitions.get(r, 0.0) for r in repetitions],
      width=width,
      label=name,
    )
  if audit.canary_format:
    axes.axhline(
      audit.canary_format["digits"] * math.log2(10),
      color="gray",
      linestyle="--",
      label="maximum (memorised)",
    )
  axes.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(repetitions))])
  axes.set_xticklabels([f"{r}x" if r else "never" for r in repetitions])
  axes.set_xlabel("times the canary was inserted into the training data")
  axes.set_ylabel("exposure (bits)")
  axes.set_title("Canary exposure")
  axes.legend()
  figure.tight_layout()
  _save_figure(figure, path)


def _save_figure(figure, path: str) -> None:
  """PNG bytes through dp_tfx.files (matplotlib writes only to local paths and file objects)."""
  from matplotlib import pyplot

  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  pyplot.close(figure)
  files.write_bytes(path, buffer.getvalue())
