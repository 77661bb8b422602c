"""The privacy report: report.json, a plot of epsilon over training steps, and a short summary.

Every number in it comes from `policy.decide` and the verified ledger; nothing is re-derived.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Optional

from dp_tfx.ledger import PrivacyLedger
from dp_tfx.policy import PrivacyDecision, PrivacyPolicy

REPORT_FILE = "report.json"
PLOT_FILE = "epsilon.png"
SUMMARY_FILE = "summary.txt"


def _json_number(value):
  return None if value is None or not math.isfinite(value) else value


def build_report(decision: PrivacyDecision, policy: Optional[PrivacyPolicy],
                 ledger: Optional[PrivacyLedger], curve: list) -> dict:
  """The report as a dict: the decision, the policy, the ledger's facts and the epsilon curve."""
  report = {"decision": decision.to_dict(),
            "epsilon": _json_number(decision.epsilon),
            "epsilon_is_infinite": decision.epsilon is not None and math.isinf(decision.epsilon),
            "delta": decision.delta,
            "policy": json.loads(policy.to_json()) if policy else None,
            "epsilon_curve": [{"step": s, "epsilon": _json_number(e)} for s, e in curve]}
  if ledger is not None:
    report["ledger"] = {"facts": ledger.body(), "content_hash": ledger.content_hash(),
                        "noisy_steps": ledger.noisy_steps, "privacy_unit": ledger.privacy_unit,
                        "rigorous": ledger.rigorous}
    if not ledger.rigorous:
      report["note"] = ("training used shuffled fixed-size batches; the epsilon is computed as if "
                        "batches were Poisson-sampled and is not a rigorous bound")
  return report


def write_report(directory, decision: PrivacyDecision, policy: Optional[PrivacyPolicy],
                 ledger: Optional[PrivacyLedger], curve: list) -> pathlib.Path:
  """Writes report.json, summary.txt and (when there is a curve) epsilon.png under `directory`."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  report = build_report(decision, policy, ledger, curve)
  (directory / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
  (directory / SUMMARY_FILE).write_text(_summary(decision, policy, ledger) + "\n")
  if curve:
    _plot(directory / PLOT_FILE, curve, policy)
  return directory


def _summary(decision, policy, ledger) -> str:
  lines = [decision.summary]
  if decision.epsilon is not None:
    lines.append(f"epsilon = {decision.epsilon:.4g} at delta = {decision.delta:.3g}"
                 + (f" ({policy.accountant} accountant; policy max_epsilon {policy.max_epsilon:g})"
                    if policy else ""))
  if ledger is not None:
    segment = ledger.segments[-1] if ledger.segments else None
    lines.append(f"{ledger.noisy_steps} noisy steps on {ledger.dataset_size} "
                 f"{ledger.privacy_unit}s" + (
                     f"; sampling {segment.sampling} q={segment.sampling_rate:.4g}, "
                     f"sigma={segment.noise_multiplier:g}, C={segment.l2_norm_clip:g}"
                     if segment else ""))
  return "\n".join(lines)


def _plot(path, curve, policy) -> None:
  import matplotlib

  matplotlib.use("Agg")  # files only; no display here
  from matplotlib import pyplot

  figure, axes = pyplot.subplots(figsize=(6, 4))
  steps = [s for s, _ in curve]
  axes.plot(steps, [e for _, e in curve], marker="o", label="epsilon (from the ledger)")
  if policy is not None:
    axes.axhline(policy.max_epsilon, color="red", linestyle="--",
                 label=f"policy max_epsilon = {policy.max_epsilon:g}")
  top = max([e for _, e in curve] + ([policy.max_epsilon] if policy else []))
  axes.set_ylim(0, 1.1 * top)  # keep the policy line inside the plot
  axes.set_xlabel("noisy steps")
  axes.set_ylabel("epsilon")
  axes.set_title("Privacy spent during training")
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)
