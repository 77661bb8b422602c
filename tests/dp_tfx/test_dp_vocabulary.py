"""The DP vocabulary: frequent tokens kept with near-exact counts, one unit's tokens never, and
one unit moves the released counts by at most its bound (PipelineDP's noise is unseeded: each
statement below fails an honest implementation with the probability it states)."""

import json

import apache_beam as beam
import pytest

from dp_tfx.preprocessing.vocabulary import VocabularyParams, dp_vocabulary, tokens_of


def _vocabulary(tmp_path, rows, params):
  """Runs dp_vocabulary on (unit, tokens) rows with Beam's direct runner; (vocabulary, event)."""
  out = str(tmp_path / "vocabulary.json")
  with beam.Pipeline() as pipeline:
    vocabulary, event = dp_vocabulary(
      pipeline | beam.Create(rows), params, lambda row: row[0], lambda row: row[1]
    )
    _ = (
      vocabulary
      | beam.Map(json.dumps)
      | beam.io.WriteToText(out, shard_name_template="")  # one file, one line
    )
  with open(out) as handle:
    return [tuple(entry) for entry in json.loads(handle.read())], event


def test_tokens_many_units_used_are_kept_and_one_units_token_is_not(tmp_path):
  rows = [(unit, ["the", "and"]) for unit in range(300)] + [("canary", ["the", "pin-4711"])]
  params = VocabularyParams(epsilon=2.0, delta=1e-7, max_tokens_per_unit=2)
  vocabulary, event = _vocabulary(tmp_path, rows, params)
  counts = dict(vocabulary)
  # A token of one unit is kept with probability about delta (1e-7).
  assert sorted(counts) == ["and", "the"]
  # The count's Laplace scale is at most max_tokens_per_unit / (epsilon / 2) = 2: 30 scales
  # from the exact count has probability e^-30.
  assert counts["the"] == pytest.approx(301, abs=30)
  assert counts["and"] == pytest.approx(300, abs=30)
  assert (event.statistic, event.epsilon, event.delta) == ("vocabulary", 2.0, 1e-7)


def test_one_unit_moves_the_released_counts_by_at_most_its_bound(tmp_path):
  """D and D' = D plus one unit with five tokens, at most two of them counted: with almost no
  noise (epsilon 1e4: Laplace scale 4e-4) the counts differ by at most 1 each and 2 in all."""
  # Each unit of D within the bound (two tokens), so D's own counts are exact: a, b, c used by
  # 100, 200 and 100 units.
  base = [(unit, ["a", "b"] if unit < 100 else ["b", "c"]) for unit in range(200)]
  params = VocabularyParams(epsilon=1e4, delta=1e-7, max_tokens_per_unit=2)
  without, _ = _vocabulary(tmp_path / "d", base, params)
  with_one, _ = _vocabulary(tmp_path / "d-prime", base + [("one", list("abcde"))], params)
  before, after = dict(without), dict(with_one)
  assert sorted(before) == sorted(after) == ["a", "b", "c"]  # "d", "e": one unit each
  assert [before[token] for token in "abc"] == pytest.approx([100, 200, 100], abs=0.01)
  moves = [after[token] - before[token] for token in before]
  assert all(-0.01 < move < 1.01 for move in moves), moves
  assert sum(moves) < 2.01, moves


def test_top_k_keeps_the_largest_noisy_counts(tmp_path):
  rows = [
    (unit, ["x"] + (["y"] if unit < 400 else []) + (["z"] if unit < 200 else []))
    for unit in range(600)
  ]
  params = VocabularyParams(epsilon=4.0, delta=1e-7, max_tokens_per_unit=3, top_k=2)
  vocabulary, _ = _vocabulary(tmp_path, rows, params)
  # Laplace scale <= 1.5: counts 600, 400, 200 keep their order but with probability ~e^-60.
  assert tokens_of(vocabulary) == ["x", "y"]


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"epsilon": 0}, "epsilon must be"),
    ({"epsilon": float("inf")}, "epsilon must be"),
    ({"delta": 0}, "delta must be in"),
    ({"delta": float("nan")}, "delta must be in"),
    ({"max_tokens_per_unit": 0}, "max_tokens_per_unit must be"),
    ({"max_tokens_per_unit": 2.5}, "max_tokens_per_unit must be"),
    ({"top_k": 0}, "top_k must be"),
  ],
)
def test_parameters_that_promise_nothing_are_refused(changes, message):
  good = {"epsilon": 1.0, "delta": 1e-6, "max_tokens_per_unit": 4}
  with pytest.raises(ValueError, match=message):
    VocabularyParams(**{**good, **changes})
