"""The DP character-LM pipeline end to end on a small slice: canaries, control, audit, push."""

import collections
import json
import pathlib

import pytest
import tensorflow as tf

from dp_tfx.pipelines import cli
from dp_tfx.audit.canaries import load_canaries
from dp_tfx.components.privacy_auditor import executor as auditor_executor
from dp_tfx.ledger import SEQUENCE
from dp_tfx.pipelines import lm_data, lm_model
from tests import recomputed


def _records(path):
  return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


@pytest.mark.slow
def test_lm_pipeline_reports_the_audit_for_the_dp_model_and_the_control(
  tmp_path, capsys, monkeypatch
):
  # What each model's audit scores, first the attacked members, then the attacked non-members.
  scored = collections.defaultdict(list)
  member_losses = {}  # the attacked members' losses under each model
  scorers = []  # kept alive, so that no two scorers share an id()
  losses = auditor_executor._ModelScorer.losses

  def recording_losses(scorer, serialized):
    if id(scorer) not in scored:
      scorers.append(scorer)
    result = losses(scorer, serialized)
    if len(scored[id(scorer)]) < 2:
      scored[id(scorer)].append(list(serialized))
      member_losses.setdefault(id(scorer), result)
    return result

  monkeypatch.setattr(auditor_executor._ModelScorer, "losses", recording_losses)

  # 600 training sequences + 42 canary copies, batch 100, 1 epoch: 6 noisy steps.
  assert (
    cli.main(
      [
        "pipeline",
        "--example",
        "lm",
        "--output-dir",
        str(tmp_path),
        "--data-limit",
        "600",
        "--batch-size",
        "100",
        "--epochs",
        "1",
        "--max-epsilon",
        "8",
        "--control",
        "--json",
      ]
    )
    == 0
  )
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["example"] == "lm" and result["pushed"], result["verdict"]
  report = json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
  audit = report["audit"]

  # The data, read back from the files the pipeline wrote: the canary copies in the train split
  # are exactly what the canary file says.
  data = tmp_path / "data"
  train = _records(data / lm_data.TRAIN_DIR / lm_data.RECORD_FILE)
  held_out = _records(data / lm_data.EVAL_DIR / lm_data.RECORD_FILE)
  canary_format, canaries = load_canaries(data / lm_data.CANARY_FILE)
  inserted = [c for c in canaries if c.repetitions]
  copies = lm_model.canary_examples([canary_format.text(c.secret) for c in inserted], None)
  in_train = collections.Counter(train)
  assert [in_train[record] for record in copies] == [c.repetitions for c in inserted]
  canary_copies = sum(c.repetitions for c in inserted)
  assert len(train) == 600 + canary_copies and canary_copies == 42
  # The auditor attacks min(1000, members, non-members) of each: members without the canaries.
  attacked = min(1000, len(train) - canary_copies, len(held_out))
  assert attacked == len(held_out) == 67

  for name, section in (("DP model", audit), ("control", audit["control"])):
    for side in ("positives", "negatives"):
      assert section["counts"][side] + section["threshold_selection_counts"][side] == attacked
    # The membership bound follows from the counts; the exposures from the ranks.
    recomputed.assert_membership_section_follows_from_its_counts(section, report["delta"])
    recomputed.assert_exposures_follow_from_their_ranks(
      section, [(c.secret, c.repetitions) for c in canaries], canary_format.digits
    )
    # Exposure of canaries inserted 1, 4 and 16 times, and of never-inserted references (0).
    assert set(section["canary_exposure"]) == {"0", "1", "4", "16"}, name
    assert 1 < section["held_out_metrics"]["bits_per_character"] < 8, name
  for summary, section in (
    (result["audit"], audit),
    (result["audit"]["control"], audit["control"]),
  ):
    assert summary["empirical_epsilon_lower_bound"] == section["empirical_epsilon_lower_bound"]
    assert summary["canary_exposure"] == section["canary_exposure"]

  # Two models audited (the DP model, then the control), each attacked on members from the train
  # split without a single canary copy (a canary repeated r times is r privacy units, not one),
  # and on non-members from the eval split.
  assert len(scorers) == 2
  train_set, held_out_set, copy_set = set(train), set(held_out), set(copies)
  for scorer in scorers:
    members, non_members = scored[id(scorer)]
    assert len(members) == len(non_members) == attacked
    assert sum(record not in train_set for record in members) == 0
    assert sum(record in copy_set for record in members) == 0  # canary copies attacked
    assert sum(record not in held_out_set for record in non_members) == 0

  # The training sequences the control finds likelier than the DP model by the most: the largest
  # loss gaps among the attacked members, as text.
  model_losses, control_losses = (member_losses[id(scorer)] for scorer in scorers)
  gaps = model_losses - control_losses
  largest = sorted(range(attacked), key=lambda i: -gaps[i])[:10]
  members = scored[id(scorers[0])][0]
  parsed = tf.io.parse_example(tf.constant(members), lm_model.feature_spec(None))
  texts = lm_model.example_text(parsed, None)
  disagreements = audit["disagreements"]
  assert [d["text"] for d in disagreements] == [texts[i] for i in largest]
  assert [d["gap"] for d in disagreements] == pytest.approx([gaps[i] for i in largest])
  assert all(len(d["text"]) == lm_model.SEQUENCE_LENGTH + 1 for d in disagreements)
  assert result["audit"]["disagreements"] == disagreements
  assert (
    "training examples the control finds likelier"
    in (pathlib.Path(result["report_dir"]) / "summary.txt").read_text()
  )

  # Six noisy steps with sigma 1: the attack proves nothing beyond the ledger's epsilon.
  assert audit["empirical_epsilon_lower_bound"] <= result["epsilon"]
  assert report["ledger"]["privacy_unit"] == SEQUENCE
  assert audit["canary_format"] == {"prefix": "my pin is ", "digits": 5}
  assert (pathlib.Path(result["report_dir"]) / "exposure.png").stat().st_size > 1000
