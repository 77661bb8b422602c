"""PrivacyAuditor on real trained models: a broken trainer is caught by the gate, an honest one
is not.

The broken trainer adds no noise while its ledger claims sigma = 8 (epsilon 1.33 at delta 1/N).
On 400 randomly labelled examples the un-noised model memorises its training set, the
loss-threshold attack separates members from non-members, and the empirical lower bound (about
3.9 with 200 + 200 held-out attack examples) exceeds what the ledger claims.
"""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from tfx.types import standard_artifacts

from dp_tfx import noise
from dp_tfx.audit.result import AUDIT_FILE, PrivacyAudit
from dp_tfx.components import artifacts, specs, testing
from dp_tfx.components.privacy_auditor import component, executor
from dp_tfx.config import DPConfig
from dp_tfx.ledger import LEDGER_FILE_NAME, PrivacyLedger
from dp_tfx.policy import PrivacyPolicy
from tests import recomputed
from tests.components import memorizing_model

EXAMPLES_PER_SPLIT = 400
DELTA = 1.0 / EXAMPLES_PER_SPLIT
# sigma 8, q = 100/400, 300 steps: epsilon 1.33 at delta 1/400 (PLD).
CONFIG = DPConfig(noise_multiplier=8.0, batch_size=100, steps=300, delta=DELTA, seed=3)
POLICY = PrivacyPolicy(max_epsilon=10.0, delta=DELTA, allow_seeded=True)


def _artifact(kind, uri):
  artifact = kind()
  artifact.uri = str(uri)
  os.makedirs(artifact.uri, exist_ok=True)
  return artifact


def _random_label_examples(root: pathlib.Path):
  rng = np.random.default_rng(0)
  files = {}
  for split in ("train", "eval"):
    files[split] = root / f"{split}.tfrecord"
    with tf.io.TFRecordWriter(str(files[split])) as writer:
      for _ in range(EXAMPLES_PER_SPLIT):
        writer.write(
          tf.train.Example(
            features=tf.train.Features(
              feature={
                memorizing_model.FEATURES_KEY: tf.train.Feature(
                  float_list=tf.train.FloatList(value=rng.normal(size=memorizing_model.DIMENSION))
                ),
                memorizing_model.LABEL_KEY: tf.train.Feature(
                  int64_list=tf.train.Int64List(value=[int(rng.integers(memorizing_model.CLASSES))])
                ),
              }
            )
          ).SerializeToString()
        )
  return testing.examples_artifact(root / "examples", files)


def _audit(root: pathlib.Path, examples, model):
  audit = _artifact(artifacts.PrivacyAudit, root / "audit")
  executor.Executor().Do(
    {specs.EXAMPLES_KEY: [examples], specs.MODEL_KEY: [model]},
    {specs.PRIVACY_AUDIT_KEY: [audit]},
    {specs.MODULE_FILE_KEY: memorizing_model.__file__},
  )
  return audit


def _evaluate(root: pathlib.Path, trained, audit):
  """The real PrivacyEvaluator executor on the trainer's and the auditor's artifacts."""
  blessing = _artifact(standard_artifacts.ModelBlessing, root / "blessing")
  report = _artifact(artifacts.PrivacyReport, root / "report")
  from dp_tfx.components.privacy_evaluator import executor as evaluator_executor

  evaluator_executor.Executor().Do(
    {
      specs.MODEL_KEY: trained[specs.MODEL_KEY],
      specs.PRIVACY_AUDIT_KEY: [audit],
      specs.PRIVACY_LEDGER_KEY: trained[specs.PRIVACY_LEDGER_KEY],
    },
    {specs.BLESSING_KEY: [blessing], specs.PRIVACY_REPORT_KEY: [report]},
    {specs.PRIVACY_POLICY_KEY: POLICY.to_json()},
  )
  return testing.read_evaluation(blessing, report)


def _run(root: pathlib.Path):
  examples = _random_label_examples(root)
  trained = testing.run_dp_trainer(examples, root, CONFIG, memorizing_model.__file__)
  audit = _audit(root, examples, trained[specs.MODEL_KEY][0])
  ledger = PrivacyLedger.load(
    os.path.join(trained[specs.PRIVACY_LEDGER_KEY][0].uri, LEDGER_FILE_NAME)
  )
  return audit, ledger, _evaluate(root, trained, audit)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
  """The trainer with its noise switched off; the ledger still records sigma = 8."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(
      noise,
      "gaussian_noise",
      lambda shapes, dtypes, *args, **kwargs: [
        tf.zeros(shape, dtype) for shape, dtype in zip(shapes, dtypes)
      ],
    )
    patch.setattr(
      noise,
      "host_gaussian_noise",
      lambda variables, *args, **kwargs: lambda step: [tf.zeros_like(v) for v in variables],
    )
    return _run(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("honest"))


@pytest.mark.slow
def test_a_trainer_without_noise_is_caught_by_the_audit_and_refused(broken):
  audit_artifact, ledger, result = broken
  epsilon = ledger.epsilon(DELTA)
  assert epsilon == pytest.approx(1.33, abs=0.01)  # what the broken ledger claims
  bound = result.report["audit"]["empirical_epsilon_lower_bound"]
  assert bound > epsilon + 1.0
  # The bound follows from the attack's stored counts (recomputed without dp_tfx).
  assert (
    result.report["audit"]["counts"]
    == PrivacyAudit.load(audit_artifact.uri).model.membership.counts.to_dict()
  )
  recomputed.assert_membership_section_follows_from_its_counts(result.report["audit"], DELTA)
  testing.assert_not_blessed(result, reason="membership-inference audit")
  assert result.blessing.get_float_custom_property(artifacts.LOWER_BOUND_PROPERTY) == bound
  assert audit_artifact.get_float_custom_property(artifacts.LOWER_BOUND_PROPERTY) > epsilon


@pytest.mark.slow
def test_an_honest_trainer_passes_the_audit(honest):
  _, ledger, result = honest
  assert result.report["audit"]["empirical_epsilon_lower_bound"] <= ledger.epsilon(DELTA)
  testing.assert_blessed(result)


@pytest.mark.slow
def test_the_audit_records_attack_sizes_and_rates(honest):
  audit_artifact, _, result = honest
  audit = PrivacyAudit.load(audit_artifact.uri)
  counts = audit.model.membership.counts
  # 400 members and 400 non-members attacked, half of each choosing the threshold.
  assert counts.positives == counts.negatives == EXAMPLES_PER_SPLIT // 2
  assert audit.delta == pytest.approx(DELTA) and audit.confidence == 0.95
  section = result.report["audit"]
  assert section["attack"] == "loss_threshold"
  # The report's rates and bound follow from the stored counts (recomputed without dp_tfx).
  assert section["counts"] == counts.to_dict()
  recomputed.assert_membership_section_follows_from_its_counts(section, DELTA)
  assert (pathlib.Path(audit_artifact.uri) / AUDIT_FILE).exists()
  assert "empirical epsilon >=" in (pathlib.Path(result.report_dir) / "summary.txt").read_text()


def test_component_validates_its_arguments():
  from tfx import types

  examples = types.Channel(type=standard_artifacts.Examples)
  model = types.Channel(type=standard_artifacts.Model)
  with pytest.raises(ValueError, match="exactly one of module_file or module_path"):
    component.PrivacyAuditor(examples=examples, model=model)
  with pytest.raises(ValueError, match="max_examples"):
    component.PrivacyAuditor(examples=examples, model=model, module_file="m.py", max_examples=2)
  with pytest.raises(ValueError, match="delta"):
    component.PrivacyAuditor(examples=examples, model=model, module_file="m.py", delta=1.5)


def _examples(tmp_path, records):
  path = tmp_path / "train.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return testing.examples_artifact(tmp_path / "examples", {"train": path})


def test_a_canary_file_that_does_not_describe_the_training_data_is_refused(tmp_path):
  from dp_tfx.audit.canaries import Canary

  examples = _examples(tmp_path, [b"a", b"canary-1", b"b", b"canary-1", b"canary-2"])
  canaries = [Canary("11111", 2), Canary("22222", 1), Canary("33333", 0)]
  copies = [b"canary-1", b"canary-2", b"canary-3"]
  sample = executor._SplitSample.draw(examples, "train", 10, np.random.default_rng(0), skip=copies)
  assert sample.records.tolist() == [b"a", b"b"] and sample.positions.tolist() == [0, 1]
  assert sample.count == 2
  executor._check_canary_copies(sample.skipped, copies, canaries)
  # A canary file for other data: its third canary (never inserted) is a training record.
  wrong = [b"canary-1", b"canary-2", b"b"]
  sample = executor._SplitSample.draw(examples, "train", 10, np.random.default_rng(0), skip=wrong)
  with pytest.raises(ValueError, match="does not describe the training data"):
    executor._check_canary_copies(sample.skipped, wrong, canaries)


def test_the_attacked_examples_are_a_uniform_sample_drawn_in_one_pass(tmp_path):
  # 50 records, samples of 10 under 400 seeds: every record in about a fifth of them.
  records = [b"record-%02d" % i for i in range(50)]
  examples = _examples(tmp_path, records)
  included = np.zeros(50)
  for seed in range(400):
    sample = executor._SplitSample.draw(examples, "train", 10, np.random.default_rng(seed))
    assert sample.count == 50 and len(sample.records) == 10
    assert [records[p] for p in sample.positions] == sample.records.tolist()
    included[sample.positions] += 1
  expected = 400 * 10 / 50
  chi2 = np.sum((included - expected) ** 2 / (expected * (1 - 10 / 50)))
  assert stats.chi2.sf(chi2, 49) > 1e-3
