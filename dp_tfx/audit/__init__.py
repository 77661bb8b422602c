"""Empirical privacy audits: what a trained model's behaviour proves about its privacy.

The accountant gives an upper bound on epsilon; `membership` turns a membership attack into a lower
bound, and `exposure` measures how strongly a model has memorised inserted canaries.
"""

from dp_tfx.audit.exposure import EXACT
from dp_tfx.audit.exposure import EXTRAPOLATED
from dp_tfx.audit.exposure import Exposure
from dp_tfx.audit.exposure import candidate_secrets
from dp_tfx.audit.exposure import exposures
from dp_tfx.audit.membership import LOSS_THRESHOLD
from dp_tfx.audit.membership import AttackCounts
from dp_tfx.audit.membership import EpsilonLowerBound
from dp_tfx.audit.membership import MembershipAudit
from dp_tfx.audit.membership import clopper_pearson
from dp_tfx.audit.membership import epsilon_lower_bound
from dp_tfx.audit.membership import loss_threshold_attack

__all__ = [
  "EXACT",
  "EXTRAPOLATED",
  "LOSS_THRESHOLD",
  "AttackCounts",
  "EpsilonLowerBound",
  "Exposure",
  "MembershipAudit",
  "candidate_secrets",
  "clopper_pearson",
  "epsilon_lower_bound",
  "exposures",
  "loss_threshold_attack",
]
