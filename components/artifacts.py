"""Artifact types of dp_tfx's components, recorded in MLMD like TFX's standard ones."""

from tfx.types import artifact

LEDGER_HASH_PROPERTY = "content_hash"
# On a PrivacyAudit at the audit's delta (AUDIT_DELTA_PROPERTY); on the PrivacyEvaluator's
# ModelBlessing at the policy's delta (the blessing's "delta").
LOWER_BOUND_PROPERTY = "empirical_epsilon_lower_bound"
AUDIT_DELTA_PROPERTY = "audit_delta"


class PrivacyLedger(artifact.Artifact):
  """The privacy ledger the DPTrainer wrote: `{uri}/privacy_ledger.json`.

  Custom property `content_hash`: the ledger's hash as written (the file carries it too).
  """

  TYPE_NAME = "dp_tfx.PrivacyLedger"


class PrivacyReport(artifact.Artifact):
  """The PrivacyEvaluator's report: report.json, epsilon.png and summary.txt under `{uri}`."""

  TYPE_NAME = "dp_tfx.PrivacyReport"


class PrivacyAudit(artifact.Artifact):
  """The PrivacyAuditor's measurements: `{uri}/audit.json` (see dp_tfx.audit.result).

  Custom property `empirical_epsilon_lower_bound`: the DP model's bound at the audit's delta.
  """

  TYPE_NAME = "dp_tfx.PrivacyAudit"
