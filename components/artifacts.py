"""Artifact types of dp_tfx's components, recorded in MLMD like TFX's standard ones, and the facts
recorded on them: for MLMD queries (`record_privacy_facts`) and for the checks of the Poisson
batches (`record_batch_facts`, `check_batches_recorded`).

What the DPTrainer records about its PrivacyLedger artifact, for later runs to check the ledger
history against, is `ledger_records`.
"""

from __future__ import annotations

import math
from typing import Optional

from tfx.types import artifact

from dp_tfx import ledger as ledger_lib
from dp_tfx import signing

# The privacy facts of a DPTrainer run, on its PrivacyLedger and Model artifacts, so that MLMD can
# be queried for them without opening files (see record_privacy_facts); epsilon and delta are
# also the PrivacyEvaluator's ModelBlessing's, at the policy's delta.
EPSILON_PROPERTY = "epsilon"
DELTA_PROPERTY = "delta"
NOISE_MULTIPLIER_PROPERTY = "noise_multiplier"
NOISY_STEPS_PROPERTY = "noisy_steps"
HISTORY_NOISY_STEPS_PROPERTY = "history_noisy_steps"
DATASET_SIZE_PROPERTY = "dataset_size"
PRIVACY_UNIT_PROPERTY = "privacy_unit"
# On a PoissonBatches artifact: its manifest's digest and, with a ledger key, the digest's HMAC
# (see record_batch_facts): whoever can edit the manifest and MLMD cannot sign a forgery.
MANIFEST_DIGEST_PROPERTY = "manifest_digest"
MANIFEST_SIGNATURE_PROPERTY = "manifest_signature"
# On a PrivacyAudit at the audit's delta (AUDIT_DELTA_PROPERTY); on the PrivacyEvaluator's
# ModelBlessing at the policy's delta (the blessing's "delta").
LOWER_BOUND_PROPERTY = "empirical_epsilon_lower_bound"
AUDIT_DELTA_PROPERTY = "audit_delta"
# On the PrivacyEvaluator's ModelBlessing (beside EPSILON_PROPERTY and DELTA_PROPERTY): the
# decision in one line, which dp_tfx's Pusher prints.
REASON_PROPERTY = "reason"


class PrivacyLedger(artifact.Artifact):
  """The privacy ledger the DPTrainer wrote: `{uri}/privacy_ledger.json`.

  Custom properties (see `ledger_records.record_ledger`):
    content_hash: the ledger's hash as written (the file carries it too).
    ledger_history_dir: the ledger history its segments were recorded in ("" for none).
    ledger_segments: JSON list of the ledger's segments, each {"segment_id", "noisy_steps",
      "fixed_facts_sha256"}.
    ledger_record_origin: JSON {"uri", "pipeline", "pipeline_run_id", "component"}: the artifact
      the record was written for (RecordOrigin).
    ledger_record_signature: with a ledger key set, the HMAC of the four properties above.
  """

  TYPE_NAME = "dp_tfx.PrivacyLedger"


class PoissonBatches(artifact.Artifact):
  """PoissonBatchGen's output: step-ordered TFRecord shards of padded Poisson samples and
  `{uri}/poisson_batches.json` (dp_tfx.poisson_batches.BatchManifest).

  Custom properties (see `record_batch_facts`): dataset_size, sampling_rate, steps, first_step,
  last_step, manifest_digest.
  """

  TYPE_NAME = "dp_tfx.PoissonBatches"


class PrivacyReport(artifact.Artifact):
  """The PrivacyEvaluator's report: report.json, epsilon.png and summary.txt under `{uri}`."""

  TYPE_NAME = "dp_tfx.PrivacyReport"


class PrivacyAudit(artifact.Artifact):
  """The PrivacyAuditor's measurements: `{uri}/audit.json` (see dp_tfx.audit.result).

  Custom property `empirical_epsilon_lower_bound`: the DP model's bound at the audit's delta.
  """

  TYPE_NAME = "dp_tfx.PrivacyAudit"


# -- facts recorded on the artifacts ---------------------------------------------------------------


def record_privacy_facts(
  target: artifact.Artifact, ledger: ledger_lib.PrivacyLedger, plan, epsilon: float
) -> None:
  """Records on `target` (the run's PrivacyLedger or Model artifact) the run's facts: sigma, its
  noisy steps and N, the privacy unit, and the ledger's total when training ended (noisy steps of
  every run in the history, epsilon at the plan's delta; no epsilon when it is infinite). The
  PrivacyEvaluator's verdict, on the blessing, judges the history as it is at evaluation time."""
  own = ledger.current_segment
  target.set_float_custom_property(NOISE_MULTIPLIER_PROPERTY, plan.noise_multiplier)
  target.set_int_custom_property(NOISY_STEPS_PROPERTY, own.noisy_steps if own else 0)
  target.set_int_custom_property(HISTORY_NOISY_STEPS_PROPERTY, ledger.noisy_steps)
  target.set_int_custom_property(DATASET_SIZE_PROPERTY, plan.dataset_size)
  target.set_string_custom_property(PRIVACY_UNIT_PROPERTY, ledger.privacy_unit)
  target.set_float_custom_property(DELTA_PROPERTY, plan.delta)
  if math.isfinite(epsilon):
    target.set_float_custom_property(EPSILON_PROPERTY, epsilon)


def check_batches_recorded(batches: artifact.Artifact, manifest, key: Optional[bytes]) -> None:
  """Raises ValueError unless `manifest` (a BatchManifest read from `batches`) has the digest
  PoissonBatchGen recorded in MLMD for the artifact and, with `key`, that digest's signature.

  The manifest's N and q make epsilon: one edited after it was written (a larger N claims a
  smaller q) would describe samples that were not drawn. MLMD is a file whoever edits the
  manifest may edit as well: with a ledger key, the signature is what they cannot forge.
  """
  digest = manifest.digest()
  recorded = string_property(batches, MANIFEST_DIGEST_PROPERTY)
  if recorded != digest:
    raise ValueError(
      f"the Poisson batches in {batches.uri} are not the ones PoissonBatchGen "
      f"recorded in MLMD (manifest digest {digest}, recorded {recorded or 'none'})"
    )
  if key is not None:
    manifest.check_signature(
      string_property(batches, MANIFEST_SIGNATURE_PROPERTY),
      key,
      f"{batches.uri} (as MLMD records them)",
    )


def record_batch_facts(target: artifact.Artifact, manifest) -> None:
  """A PoissonBatches artifact's sampling facts in MLMD (dp_tfx.poisson_batches.BatchManifest);
  the DPTrainer trains only on batches whose manifest has the recorded digest."""
  for name in ("dataset_size", "steps", "first_step", "last_step"):
    target.set_int_custom_property(name, getattr(manifest, name))
  target.set_float_custom_property("sampling_rate", manifest.sampling_rate)
  target.set_string_custom_property(MANIFEST_DIGEST_PROPERTY, manifest.digest())
  key = signing.configured_key()
  if key is not None:
    target.set_string_custom_property(MANIFEST_SIGNATURE_PROPERTY, manifest.signature(key))


def string_property(target: artifact.Artifact, name: str) -> Optional[str]:
  """The artifact's string custom property `name`; None when it has none."""
  if not target.has_custom_property(name):
    return None
  return target.get_string_custom_property(name)
