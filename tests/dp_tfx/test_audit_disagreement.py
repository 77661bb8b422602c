"""The examples the control finds likelier than the DP model, ranked by the loss gap."""

import math

import pytest

from dp_tfx.audit.disagreement import Disagreement, most_disagreeing


def test_the_largest_gaps_come_first_with_their_records_losses_and_texts():
  records = [40, 41, 42, 43, 44]
  model = [2.0, 5.0, 1.0, 4.0, 3.0]
  control = [1.5, 1.0, 2.0, 1.0, 1.0]  # gaps 0.5, 4, -1, 3, 2
  texts = ["a", "b", "c", "d", "e"]
  found = most_disagreeing(records, model, control, texts=texts, count=3)
  assert [(d.record, d.model_loss, d.control_loss, d.text) for d in found] == [
    (41, 5.0, 1.0, "b"),
    (43, 4.0, 1.0, "d"),
    (44, 3.0, 1.0, "e"),
  ]
  assert [d.gap for d in found] == [4.0, 3.0, 2.0]
  assert found[0].to_dict() == {
    "record": 41,
    "model_loss": 5.0,
    "control_loss": 1.0,
    "text": "b",
    "gap": 4.0,
  }
  assert Disagreement.from_dict(found[0].to_dict()) == found[0]


def test_ties_keep_the_record_order_and_impossible_examples_are_left_out():
  found = most_disagreeing([0, 1, 2, 3], [2.0, math.inf, 2.0, float("nan")], [1.0, 1.0, 1.0, 1.0])
  assert [d.record for d in found] == [0, 2]
  assert all(d.text is None for d in found)


def test_a_loss_per_record_from_each_model_is_required():
  with pytest.raises(ValueError, match="one loss per record"):
    most_disagreeing([0, 1], [1.0, 2.0], [1.0])
