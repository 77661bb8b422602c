"""audit.json round trips, and every malformed value is refused on load (the gate reads it)."""

import dataclasses
import json
import math

import pytest

from dp_tfx.audit import AttackCounts, Exposure, MembershipAudit
from dp_tfx.audit.disagreement import Disagreement
from dp_tfx.audit.result import AUDIT_FILE, CanaryResult, ModelAudit, PrivacyAudit


def _audit():
  counts = AttackCounts(true_positives=260, positives=500, false_positives=240, negatives=500)
  canaries = [
    CanaryResult(
      repetitions=r,
      exposure=Exposure(
        secret=secret,
        exposure=bits,
        method="exact",
        rank=2 ** (5 * math.log2(10) - bits),
        candidates_scored=10**5,
      ),
    )
    for r, secret, bits in ((16, "12345", 9.5), (16, "54321", 7.5), (0, "00042", 1.0))
  ]
  model = ModelAudit(
    MembershipAudit("loss_threshold", 1.5, counts, counts),
    canaries=canaries,
    held_out_metrics={"accuracy": 0.9},
  )
  return PrivacyAudit(
    model_digest="sha256:m",
    delta=1e-5,
    confidence=0.95,
    model=model,
    control=model,
    canary_format={"prefix": "my pin is ", "digits": 5},
    disagreements=[Disagreement(7, 3.25, 0.5, "my pin is 12345"), Disagreement(2, 2.0, 1.0)],
  )


def test_round_trip_and_summaries(tmp_path):
  audit = _audit()
  audit.save(tmp_path)
  loaded = PrivacyAudit.load(tmp_path)
  assert loaded == audit
  assert loaded.model.exposure_by_repetitions() == {0: 1.0, 16: 8.5}
  assert loaded.model.max_inserted_exposure() == 9.5  # the never-inserted 0x canary is no memory
  assert loaded.empirical_epsilon_lower_bound() == 0.0


def _edited(tmp_path, edit):
  _audit().save(tmp_path)
  path = tmp_path / AUDIT_FILE
  document = json.loads(path.read_text())
  edit(document)
  path.write_text(json.dumps(document))


@pytest.mark.parametrize(
  "edit",
  [
    lambda d: d["model"]["canaries"][0].update(exposure=float("nan")),
    lambda d: d["model"]["canaries"][0].update(exposure=-1.0),
    lambda d: d["model"]["canaries"][0].update(exposure=40.0),  # above log2(10**5)
    lambda d: d["model"]["canaries"][0].update(exposure="9.5"),
    lambda d: d["model"]["canaries"][0].update(repetitions=-2),
    lambda d: d["model"]["canaries"][0].update(method="guessed"),
    lambda d: d.update(confidence=1.5),
    lambda d: d.update(delta=float("nan")),
    lambda d: d.update(model_digest=""),
    lambda d: d.update(canary_format={"prefix": "x", "digits": 0}),
    lambda d: d["model"].update(held_out_metrics={"accuracy": float("inf")}),
    lambda d: d["model"]["membership"]["counts"].update(true_positives=501),
    lambda d: d.pop("model"),
    lambda d: d["disagreements"][0].update(model_loss=float("nan")),
    lambda d: d["disagreements"][0].update(record=-1),
    lambda d: d["disagreements"][0].update(text=12345),
    lambda d: d["disagreements"][0].update(secret="x"),
  ],
  ids=[
    "nan",
    "negative",
    "above-maximum",
    "string",
    "repetitions",
    "method",
    "confidence",
    "delta",
    "digest",
    "format",
    "metric",
    "counts",
    "missing",
    "disagreement-loss",
    "disagreement-record",
    "disagreement-text",
    "disagreement-field",
  ],
)
def test_malformed_audits_are_refused_readably(tmp_path, edit):
  _edited(tmp_path, edit)
  with pytest.raises(ValueError, match="cannot read the privacy audit"):
    PrivacyAudit.load(tmp_path)


def test_a_file_that_is_not_an_object_is_refused(tmp_path):
  (tmp_path / AUDIT_FILE).write_text("[1, 2]")
  with pytest.raises(ValueError, match="cannot read the privacy audit"):
    PrivacyAudit.load(tmp_path)


def test_the_report_lists_the_disagreements_beside_the_control(tmp_path):
  from dp_tfx import report
  from dp_tfx.policy import PrivacyDecision

  long_text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind"
  audit = dataclasses.replace(
    _audit(), disagreements=[Disagreement(7, 3.25, 0.5, long_text), Disagreement(2, 2.0, 1.0)]
  )
  report.write_report(tmp_path, PrivacyDecision(reasons=["test"]), None, None, [], audit)
  document = json.loads((tmp_path / report.REPORT_FILE).read_text())
  assert [d["record"] for d in document["audit"]["disagreements"]] == [7, 2]
  assert document["audit"]["disagreements"][0]["gap"] == 2.75
  summary = (tmp_path / report.SUMMARY_FILE).read_text().splitlines()
  assert summary[-3:] == [
    "training examples the control finds likelier than the DP model, by the most (loss DP vs "
    "control; 2 of 2 in report.json):",
    f"  3.25 vs 0.5: {long_text[:70] + '...'!r}",
    "  2 vs 1: training record 2",
  ]
