"""Artifact types of dp_tfx's components, recorded in MLMD like TFX's standard ones."""

from tfx.types import artifact

LEDGER_HASH_PROPERTY = "content_hash"


class PrivacyLedger(artifact.Artifact):
  """The privacy ledger the DPTrainer wrote: `{uri}/privacy_ledger.json`.

  Custom property `content_hash`: the ledger's hash as written (the file carries it too).
  """

  TYPE_NAME = "dp_tfx.PrivacyLedger"


class PrivacyReport(artifact.Artifact):
  """The PrivacyEvaluator's report: report.json, epsilon.png and summary.txt under `{uri}`."""

  TYPE_NAME = "dp_tfx.PrivacyReport"
