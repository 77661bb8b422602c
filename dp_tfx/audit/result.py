"""What a privacy audit measured on one trained model (and its non-private control), as JSON.

The PrivacyAuditor writes it; the PrivacyEvaluator reads it and recomputes the empirical epsilon
lower bound at its own delta from the stored attack counts. Every field is validated on load, so a
malformed file is refused, never read as "nothing found". The file is not tamper-evident: whoever
can write the artifact store can lower the measured exposures, as they could replace the model.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Dict, List, Optional

from dp_tfx import files
from dp_tfx.audit.canaries import CanaryFormat
from dp_tfx.audit.disagreement import Disagreement
from dp_tfx.audit.exposure import Exposure
from dp_tfx.audit.membership import MembershipAudit
from dp_tfx.checks import is_finite_number, is_int

AUDIT_FILE = "audit.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CanaryResult:
  """One canary: how often it was inserted into the training data and its measured exposure."""

  repetitions: int
  exposure: Exposure

  def to_dict(self) -> dict:
    return {"repetitions": self.repetitions, **self.exposure.to_dict()}

  def __post_init__(self):
    if not (is_int(self.repetitions) and self.repetitions >= 0):
      raise ValueError(f"CanaryResult.repetitions must be an int >= 0; got {self.repetitions!r}")

  @classmethod
  def from_dict(cls, values: dict) -> "CanaryResult":
    values = dict(values)
    repetitions = values.pop("repetitions")
    return cls(repetitions=repetitions, exposure=Exposure(**values))


@dataclasses.dataclass(frozen=True)
class ModelAudit:
  """The measurements on one model.

  Attributes:
    membership: the membership-inference attack (threshold and counts).
    canaries: each canary's exposure; empty when the data had no canaries.
    held_out_metrics: utility on the held-out split from the user module (e.g. bits per
      character), so a reader sees what privacy cost.
  """

  membership: MembershipAudit
  canaries: List[CanaryResult] = dataclasses.field(default_factory=list)
  held_out_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)

  def exposure_by_repetitions(self) -> Dict[int, float]:
    """Mean exposure (bits) of the canaries inserted r times, for each r (0: never inserted)."""
    grouped = collections.defaultdict(list)
    for canary in self.canaries:
      grouped[canary.repetitions].append(canary.exposure.exposure)
    return {r: sum(values) / len(values) for r, values in sorted(grouped.items())}

  def max_inserted_exposure(self) -> Optional[float]:
    """The largest exposure of any canary that was actually inserted (None without canaries)."""
    inserted = [c.exposure.exposure for c in self.canaries if c.repetitions > 0]
    return max(inserted) if inserted else None

  def to_dict(self) -> dict:
    return {
      "membership": self.membership.to_dict(),
      "canaries": [canary.to_dict() for canary in self.canaries],
      "canary_exposure": {str(r): e for r, e in self.exposure_by_repetitions().items()},
      "held_out_metrics": dict(self.held_out_metrics),
    }

  @classmethod
  def from_dict(cls, values: dict) -> "ModelAudit":
    metrics = values.get("held_out_metrics", {})
    if not all(isinstance(k, str) and is_finite_number(v) for k, v in metrics.items()):
      raise ValueError(f"held_out_metrics must map names to finite numbers; got {metrics!r}")
    return cls(
      membership=MembershipAudit.from_dict(values["membership"]),
      canaries=[CanaryResult.from_dict(c) for c in values.get("canaries", [])],
      held_out_metrics=dict(metrics),
    )


@dataclasses.dataclass(frozen=True)
class PrivacyAudit:
  """The audit of one trained model.

  Attributes:
    model_digest: digest of the audited model's files (the ledger names the same digest), so an
      audit cannot be attached to another model.
    delta: the delta at which the attack's threshold was chosen.
    confidence: the confidence of the Clopper-Pearson bounds.
    model: the measurements on the DP model.
    control: the same measurements on the non-private control, when one was trained.
    canary_format: {"prefix": ..., "digits": ...} of the canaries, when there were any.
    disagreements: with a control, the attacked training examples the control finds likelier
      than the DP model by the most, largest gap first (see dp_tfx.audit.disagreement).
  """

  model_digest: str
  delta: float
  confidence: float
  model: ModelAudit
  control: Optional[ModelAudit] = None
  canary_format: Optional[dict] = None
  disagreements: List[Disagreement] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    # Read back from a file the gate trusts: anything malformed must fail here, readably.
    if not (isinstance(self.model_digest, str) and self.model_digest):
      raise ValueError(f"PrivacyAudit.model_digest must be a digest; got {self.model_digest!r}")
    if not (is_finite_number(self.delta) and 0 <= self.delta < 1):
      raise ValueError(f"PrivacyAudit.delta must be in [0, 1); got {self.delta!r}")
    if not (is_finite_number(self.confidence) and 0 < self.confidence < 1):
      raise ValueError(f"PrivacyAudit.confidence must be in (0, 1); got {self.confidence!r}")
    if self.canary_format is not None:
      CanaryFormat(**self.canary_format)  # raises ValueError (or TypeError) if malformed

  def empirical_epsilon_lower_bound(self, delta: Optional[float] = None) -> float:
    """The DP model's empirical epsilon lower bound at `delta` (default: the audit's)."""
    return self.model.membership.lower_bound(
      self.delta if delta is None else delta, self.confidence
    ).epsilon

  def to_dict(self) -> dict:
    return {
      "format_version": FORMAT_VERSION,
      "model_digest": self.model_digest,
      "delta": self.delta,
      "confidence": self.confidence,
      "model": self.model.to_dict(),
      "control": self.control.to_dict() if self.control else None,
      "canary_format": self.canary_format,
      "disagreements": [d.to_dict() for d in self.disagreements],
    }

  @classmethod
  def from_dict(cls, values: dict) -> "PrivacyAudit":
    if values.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"unsupported audit format {values.get('format_version')!r}")
    return cls(
      model_digest=values["model_digest"],
      delta=values["delta"],
      confidence=values["confidence"],
      model=ModelAudit.from_dict(values["model"]),
      control=ModelAudit.from_dict(values["control"]) if values.get("control") else None,
      canary_format=values.get("canary_format"),
      disagreements=[Disagreement.from_dict(d) for d in values.get("disagreements", [])],
    )

  def save(self, directory) -> str:
    return files.write_text(
      os.path.join(os.fspath(directory), AUDIT_FILE),
      json.dumps(self.to_dict(), indent=2, sort_keys=True),
    )

  @classmethod
  def load(cls, directory) -> "PrivacyAudit":
    """Reads `{directory}/audit.json`; any missing or malformed part raises ValueError."""
    path = os.path.join(os.fspath(directory), AUDIT_FILE)
    try:
      return cls.from_dict(json.loads(files.read_text(path)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
      raise ValueError(f"cannot read the privacy audit at {path}: {error!r}") from None
