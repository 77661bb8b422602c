"""A DP vocabulary on Beam: the tokens many privacy units used, ranked by a noisy count.

PipelineDP's DPEngine bounds each unit's contribution (at most `max_tokens_per_unit` distinct
tokens, each counted once), selects the tokens to release by DP partition selection, and counts
them with Laplace noise; the whole computation is (epsilon, delta)-DP for adding or removing one
unit. A token used by one unit only (an e-mail address, a PIN) is kept with probability at most
about delta. Written on PipelineDP rather than by hand: partition selection and secure noise are
what it exists for.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, List, Optional, Tuple

import apache_beam as beam
import pipeline_dp

from dp_tfx.checks import is_finite_number, is_int


@dataclasses.dataclass(frozen=True)
class VocabularyParams:
  """The privacy parameters of one DP vocabulary.

  epsilon, delta: what the vocabulary costs (delta pays for partition selection).
  max_tokens_per_unit: the most distinct tokens one privacy unit adds; a unit's others are
    dropped at random (the sensitivity of the released counts rests on it).
  top_k: keep only the k tokens with the largest noisy counts (None: every selected token).
  """

  epsilon: float
  delta: float
  max_tokens_per_unit: int
  top_k: Optional[int] = None

  def __post_init__(self):
    if not (is_finite_number(self.epsilon) and self.epsilon > 0):
      raise ValueError(f"epsilon must be a finite number > 0; got {self.epsilon!r}")
    if not (is_finite_number(self.delta) and 0 < self.delta < 1):
      raise ValueError(
        f"delta must be in (0, 1): partition selection needs one; got {self.delta!r}"
      )
    if not (is_int(self.max_tokens_per_unit) and self.max_tokens_per_unit >= 1):
      raise ValueError(f"max_tokens_per_unit must be an int >= 1; got {self.max_tokens_per_unit!r}")
    if self.top_k is not None and not (is_int(self.top_k) and self.top_k >= 1):
      raise ValueError(f"top_k must be None or an int >= 1; got {self.top_k!r}")


@dataclasses.dataclass(frozen=True)
class PreprocessingEvent:
  """What one DP statistic cost, for the ledger: an (epsilon, delta) pair under add/remove of
  one privacy unit, and how it was computed."""

  statistic: str
  epsilon: float
  delta: float
  mechanism: str


def dp_vocabulary(
  rows: beam.PCollection,
  params: VocabularyParams,
  privacy_unit: Callable,
  tokens: Callable[[object], Iterable[str]],
  name: str = "vocabulary",
) -> Tuple[beam.PCollection, PreprocessingEvent]:
  """The DP vocabulary of `rows`: a PCollection of one list of (token, noisy count), largest
  first, and the event it costs. `privacy_unit(row)` names the row's unit (rows of one unit
  share it); `tokens(row)` are the row's tokens."""
  accountant = pipeline_dp.NaiveBudgetAccountant(
    total_epsilon=float(params.epsilon), total_delta=float(params.delta)
  )
  engine = pipeline_dp.DPEngine(accountant, pipeline_dp.BeamBackend())
  pairs = rows | f"{name}: unit and token" >> beam.FlatMap(
    lambda row: [(privacy_unit(row), token) for token in set(tokens(row))]
  )
  counted = engine.aggregate(
    pairs,
    pipeline_dp.AggregateParams(
      metrics=[pipeline_dp.Metrics.COUNT],
      noise_kind=pipeline_dp.NoiseKind.LAPLACE,
      max_partitions_contributed=params.max_tokens_per_unit,
      max_contributions_per_partition=1,
    ),
    pipeline_dp.DataExtractors(
      privacy_id_extractor=lambda pair: pair[0],
      partition_extractor=lambda pair: pair[1],
      value_extractor=lambda pair: None,
    ),
  )
  accountant.compute_budgets()  # before the pipeline runs: the noise scales are set here
  ranked = (
    counted
    | f"{name}: noisy counts" >> beam.Map(lambda kept: (kept[0], float(kept[1].count)))
    | f"{name}: gathered" >> beam.combiners.ToList()  # a vocabulary fits in a serving graph
    | f"{name}: largest first" >> beam.Map(_largest_first, params.top_k)
  )
  event = PreprocessingEvent(
    statistic=name,
    epsilon=float(params.epsilon),
    delta=float(params.delta),
    mechanism="pipeline_dp: partition selection, Laplace count (naive composition)",
  )
  return ranked, event


def _largest_first(
  counts: List[Tuple[str, float]], top_k: Optional[int]
) -> List[Tuple[str, float]]:
  ranked = sorted(counts, key=lambda entry: (-entry[1], entry[0]))
  return ranked if top_k is None else ranked[:top_k]


def tokens_of(vocabulary: List[Tuple[str, float]]) -> List[str]:
  """The tokens of a DP vocabulary, largest noisy count first (what a StringLookup takes)."""
  return [token for token, _ in vocabulary]
