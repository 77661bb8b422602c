"""Canary exposure: how much more likely a model finds an inserted secret than its alternatives.

Carlini et al. 2019 ("The Secret Sharer: evaluating and testing unintended memorization in neural
networks") insert a canary `prefix + secret` into the training data, the secret being one of a
space of candidates; here every string of `digits` decimal digits, 10**digits of them. After
training, every candidate is ranked by the model's log-perplexity of `prefix + candidate` (lower is
more likely, rank 1 the most likely), and

  exposure = log2(|space|) - log2(rank)    (bits).

A canary ranked first has the largest exposure, log2(|space|): the model gives the secret away.
A secret the model never saw has a uniformly random rank, whose exposure averages about
log2(e) = 1.44 bits, not 0 (-E[log2 U] for U uniform on (0, 1]).

When the space is too large to enumerate, the paper approximates the rank by distribution
modelling: the fraction of the space scoring below the canary is read off a skew-normal
distribution fitted to the log-perplexities of random candidates, and
exposure = -log2(CDF(canary's log-perplexity)).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import stats

from dp_tfx.checks import is_finite_number, is_int

EXACT, EXTRAPOLATED = "exact", "extrapolated"

ScoreFn = Callable[[list], np.ndarray]
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class Exposure:
  """One secret's exposure.

  Attributes:
    secret: the secret's digits.
    exposure: bits; in [0, log2(space)].
    method: EXACT (ranked among every candidate) or EXTRAPOLATED (from a skew-normal fitted to
      sampled candidates).
    rank: 1-based rank among every candidate, tied scores sharing their mean rank; None when
      extrapolated.
    candidates_scored: how many candidates the secret was compared with.
  """

  secret: str
  exposure: float
  method: str
  rank: Optional[float]
  candidates_scored: int

  def __post_init__(self):
    # Exposures are read back from audit files and compared with a policy's limit: a NaN or a
    # negative number must not slip through as "small".
    if not (isinstance(self.secret, str) and self.secret.isdigit() and self.secret.isascii()):
      raise ValueError(f"Exposure.secret must be decimal digits; got {self.secret!r}")
    maximum = len(self.secret) * math.log2(10)
    if not (is_finite_number(self.exposure) and 0 <= self.exposure <= maximum + 1e-9):
      raise ValueError(
        f"Exposure.exposure must be a number in [0, {maximum:.4g}] bits; got {self.exposure!r}"
      )
    if self.method not in (EXACT, EXTRAPOLATED):
      raise ValueError(
        f"Exposure.method must be {EXACT!r} or {EXTRAPOLATED!r}; got {self.method!r}"
      )
    if self.rank is not None and not (is_finite_number(self.rank) and self.rank >= 1):
      raise ValueError(f"Exposure.rank must be None or a number >= 1; got {self.rank!r}")
    if not (is_int(self.candidates_scored) and self.candidates_scored >= 1):
      raise ValueError(
        f"Exposure.candidates_scored must be an int >= 1; got {self.candidates_scored!r}"
      )

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _check_digits(digits: int) -> None:
  if not (is_int(digits) and digits >= 1):
    raise ValueError(f"digits must be an int >= 1; got {digits!r}")


def candidate_secrets(digits: int, start: int, stop: int) -> list[str]:
  """Candidates number `start` to `stop - 1` of the space, zero-padded: ("00042", ...).

  A range rather than the whole space, so that a large space is never held in memory as text.

  Args:
    digits: length of a secret.
    start: first candidate, >= 0.
    stop: one past the last candidate, <= 10**digits.

  Returns:
    The candidates, in numeric order.

  Raises:
    ValueError: for digits < 1 or a range outside the space.
  """
  _check_digits(digits)
  if not (is_int(start) and is_int(stop) and 0 <= start <= stop <= 10**digits):
    raise ValueError(f"need 0 <= start <= stop <= 10**{digits}; got start={start!r}, stop={stop!r}")
  return [f"{number:0{digits}d}" for number in range(start, stop)]


def _score(
  score_fn: ScoreFn,
  texts_between: Callable[[int, int], list],
  total: int,
  batch_size: int,
  progress: Optional[Progress],
) -> np.ndarray:
  """Scores `total` texts, built a batch at a time, and checks what the model returned."""
  scores = np.empty(total)
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    batch = np.asarray(score_fn(texts_between(start, stop)), dtype=float)
    if batch.shape != (stop - start,) or not np.all(np.isfinite(batch)):
      raise ValueError(
        f"score_fn must return {stop - start} finite log-perplexities; got shape {batch.shape}"
      )
    scores[start:stop] = batch
    if progress is not None:
      progress(stop, total)
  return scores


def _exact(score_fn, prefix, digits, secrets, batch_size, progress) -> list[Exposure]:
  space = 10**digits
  scores = _score(
    score_fn,
    lambda start, stop: [prefix + c for c in candidate_secrets(digits, start, stop)],
    space,
    batch_size,
    progress,
  )
  ordered = np.sort(scores)
  secret_scores = scores[[int(secret) for secret in secrets]]
  below = np.searchsorted(ordered, secret_scores, side="left")
  tied_others = np.searchsorted(ordered, secret_scores, side="right") - below - 1
  # Mean rank among ties: a model that scores every candidate alike has memorised nothing and
  # must not be credited with rank 1.
  ranks = 1 + below + tied_others / 2
  bits = math.log2(space) - np.log2(ranks)
  return [
    Exposure(
      secret=secret,
      exposure=float(exposure),
      method=EXACT,
      rank=float(rank),
      candidates_scored=space,
    )
    for secret, exposure, rank in zip(secrets, bits, ranks)
  ]


def _extrapolated(
  score_fn, prefix, digits, secrets, samples, batch_size, seed, progress
) -> list[Exposure]:
  # Digit by digit, so that any number of digits works without integers past 64 bits.
  rng = np.random.default_rng(seed)
  sampled = ["".join(row) for row in rng.integers(0, 10, size=(samples, digits)).astype(str)]
  texts = [prefix + candidate for candidate in sampled + secrets]
  scores = _score(score_fn, lambda start, stop: texts[start:stop], len(texts), batch_size, progress)
  shape, loc, scale = stats.skewnorm.fit(scores[:samples])
  bits = -stats.skewnorm.logcdf(scores[samples:], shape, loc, scale) / math.log(2)
  bits = np.clip(bits, 0.0, digits * math.log2(10))
  return [
    Exposure(
      secret=secret,
      exposure=float(exposure),
      method=EXTRAPOLATED,
      rank=None,
      candidates_scored=samples,
    )
    for secret, exposure in zip(secrets, bits)
  ]


def exposures(
  score_fn: ScoreFn,
  prefix: str,
  digits: int,
  secrets: Sequence[str],
  *,
  exact_limit: int = 100_000,
  samples: int = 5_000,
  batch_size: int = 4096,
  seed: int = 0,
  progress: Optional[Progress] = None,
) -> list[Exposure]:
  """The exposure of each secret, all ranked against one scoring of the candidates.

  Args:
    score_fn: maps a list of texts to an array of their log-perplexities under the model (any
      positive scale; ranking uses only their order, extrapolation also their distribution).
    prefix: the text before the secret, e.g. "my pin is ".
    digits: length of a secret; the space holds 10**digits candidates.
    secrets: the secrets to measure: inserted canaries, and never-inserted ones as a baseline.
    exact_limit: rank among every candidate when the space holds at most this many; otherwise
      extrapolate.
    samples: random candidates scored for the extrapolation's fit (seeded by `seed`).
    batch_size: texts per call of score_fn.
    seed: seeds the sampled candidates.
    progress: called as progress(done, total) after each batch, for long enumerations.

  Returns:
    One Exposure per secret, in the order given.

  Raises:
    ValueError: for bad arguments, secrets that are not `digits` decimal digits, or a score_fn
      that returns the wrong number of scores or non-finite ones.
  """
  if not callable(score_fn):
    raise ValueError("score_fn must be callable")
  if not isinstance(prefix, str):
    raise ValueError(f"prefix must be a string; got {prefix!r}")
  _check_digits(digits)
  secrets = list(secrets)
  if not secrets:
    raise ValueError("no secrets to measure")
  for secret in secrets:
    if not (
      isinstance(secret, str) and len(secret) == digits and all(c in "0123456789" for c in secret)
    ):
      raise ValueError(f"a secret must be {digits} decimal digits; got {secret!r}")
  if not (is_int(exact_limit) and exact_limit >= 0):
    raise ValueError(f"exact_limit must be an int >= 0; got {exact_limit!r}")
  if not (is_int(samples) and samples >= 3):
    raise ValueError(
      f"samples must be an int >= 3 (a skew-normal has 3 parameters); got {samples!r}"
    )
  if not (is_int(batch_size) and batch_size >= 1):
    raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
  if not is_int(seed):
    raise ValueError(f"seed must be an int; got {seed!r}")

  if 10**digits <= exact_limit:
    return _exact(score_fn, prefix, digits, secrets, batch_size, progress)
  return _extrapolated(score_fn, prefix, digits, secrets, samples, batch_size, seed, progress)
