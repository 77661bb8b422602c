"""Canary exposure: exact ranks, the never-inserted baseline, extrapolation, and a real model."""

import math

import keras
import numpy as np
import pytest
from scipy import stats

from dp_tfx.audit import exposure
from dp_tfx.audit.exposure import EXACT, EXTRAPOLATED

PREFIX = "my pin is "


class TableScores:
  """A model stand-in: each candidate's log-perplexity is looked up by the secret's number."""

  def __init__(self, scores, prefix=PREFIX):
    self.scores = np.asarray(scores, dtype=float)
    self.prefix = prefix
    self.batch_sizes = []

  def __call__(self, texts):
    self.batch_sizes.append(len(texts))
    return self.scores[[int(text[len(self.prefix) :]) for text in texts]]


def random_scores(space, seed=0):
  return np.random.default_rng(seed).uniform(1.0, 2.0, size=space)


def test_candidate_secrets_are_zero_padded_and_in_order():
  assert exposure.candidate_secrets(5, 41, 44) == ["00041", "00042", "00043"]
  assert exposure.candidate_secrets(2, 0, 100)[-1] == "99"
  assert exposure.candidate_secrets(3, 7, 7) == []


def test_the_most_likely_candidate_has_the_largest_exposure():
  scores = random_scores(10_000)
  scores[42] = 0.0
  (top,) = exposure.exposures(TableScores(scores), PREFIX, 4, ["0042"])
  assert top.exposure == math.log2(10_000)
  assert (top.rank, top.method, top.candidates_scored) == (1.0, EXACT, 10_000)


@pytest.mark.parametrize("rank", [1, 2, 37, 1000, 10_000])
def test_a_canary_at_rank_r_has_exposure_log2_space_over_r(rank):
  scores = np.random.default_rng(1).permutation(10_000) + 1.0  # distinct scores 1..10000
  secret = f"{int(np.flatnonzero(scores == rank)[0]):04d}"
  (result,) = exposure.exposures(TableScores(scores), PREFIX, 4, [secret])
  assert result.rank == rank
  assert result.exposure == pytest.approx(math.log2(10_000 / rank), abs=1e-12)


def test_ties_share_their_mean_rank():
  # A model that scores every candidate alike has memorised nothing: rank (N + 1) / 2, not 1.
  (result,) = exposure.exposures(TableScores(np.ones(100)), PREFIX, 2, ["07"])
  assert result.rank == 50.5
  assert result.exposure == pytest.approx(math.log2(100 / 50.5))


def test_all_candidates_are_scored_once_in_batches_with_progress():
  score_fn = TableScores(random_scores(10_000))
  reports = []
  results = exposure.exposures(
    score_fn,
    PREFIX,
    4,
    ["0001", "9999", "0001"],
    batch_size=4096,
    progress=lambda done, total: reports.append((done, total)),
  )
  assert score_fn.batch_sizes == [4096, 4096, 1808]
  assert reports == [(4096, 10_000), (8192, 10_000), (10_000, 10_000)]
  assert [r.secret for r in results] == ["0001", "9999", "0001"]
  assert results[0] == results[2]


def test_never_inserted_secrets_average_about_log2_e_bits():
  # Under a model that does not favour them, ranks are uniform on 1..N and the exposure
  # log2(N / rank) has mean -E[log2 U] = log2(e) = 1.44 bits and standard deviation
  # 1 / ln 2 = 1.44 bits: never 0, because half the secrets rank above the median by chance. The
  # mean of 50 has standard error 0.20 bits; the window allows 3 of them on each side.
  secrets = exposure.candidate_secrets(4, 0, 10_000)[::200]
  results = exposure.exposures(TableScores(random_scores(10_000, seed=2)), PREFIX, 4, secrets)
  mean = np.mean([r.exposure for r in results])
  assert 0.8 <= mean <= 2.1
  assert all(0 <= r.exposure <= math.log2(10_000) for r in results)


def test_extrapolation_agrees_with_the_exact_rank():
  scores = stats.skewnorm.rvs(
    4.0, loc=10.0, scale=2.0, size=10_000, random_state=np.random.default_rng(3)
  )
  order = np.argsort(scores)
  secrets = [f"{int(order[rank - 1]):04d}" for rank in (10, 30, 100, 300, 1000, 3000)]
  exact = exposure.exposures(TableScores(scores), PREFIX, 4, secrets)
  estimated = exposure.exposures(
    TableScores(scores), PREFIX, 4, secrets, exact_limit=0, samples=5000, seed=4
  )
  for by_rank, by_fit in zip(exact, estimated):
    assert (by_fit.method, by_fit.rank, by_fit.candidates_scored) == (EXTRAPOLATED, None, 5000)
    assert by_fit.exposure == pytest.approx(by_rank.exposure, abs=1.0)


def test_extrapolated_exposure_is_clipped_to_the_space():
  scores = random_scores(10_000, seed=5)
  scores[42] = -1e6  # far below anything the fit has seen: its CDF underflows to 0
  (result,) = exposure.exposures(
    TableScores(scores), PREFIX, 4, ["0042"], exact_limit=0, samples=500
  )
  assert result.exposure == math.log2(10_000)


@pytest.mark.parametrize(
  "arguments",
  [
    dict(digits=0, secrets=["1"]),
    dict(digits=2, secrets=[]),
    dict(digits=2, secrets=["123"]),
    dict(digits=2, secrets=["1a"]),
    dict(digits=2, secrets=["١٢"]),  # Arabic-Indic digits are digits to str.isdigit, not here
    dict(digits=2, secrets=[12]),
    dict(digits=2, secrets=["12"], batch_size=0),
    dict(digits=2, secrets=["12"], samples=2),
    dict(digits=2, secrets=["12"], exact_limit=-1),
  ],
)
def test_bad_arguments_are_refused(arguments):
  with pytest.raises(ValueError):
    exposure.exposures(TableScores(random_scores(100)), PREFIX, **arguments)


@pytest.mark.parametrize(
  "bad_scores",
  [
    lambda texts: np.zeros(len(texts) - 1),
    lambda texts: np.full(len(texts), np.nan),
  ],
)
def test_a_score_fn_that_misbehaves_is_refused(bad_scores):
  with pytest.raises(ValueError):
    exposure.exposures(bad_scores, PREFIX, 2, ["12"])


@pytest.mark.parametrize("start, stop", [(-1, 3), (5, 4), (0, 101)])
def test_bad_candidate_ranges_are_refused(start, stop):
  with pytest.raises(ValueError):
    exposure.candidate_secrets(2, start, stop)


# A real model: a character GRU that sees one canary many times among lines with random secrets.
CANARY_SECRET = "123"
ALPHABET = sorted(set(PREFIX + "0123456789"))
START = len(ALPHABET)  # the token before a line's first character


def encode(texts):
  """Inputs (start token, then all but the last character) and next-character targets."""
  targets = np.array([[ALPHABET.index(c) for c in text] for text in texts])
  inputs = np.concatenate([np.full((len(texts), 1), START), targets[:, :-1]], axis=1)
  return inputs, targets


def train_memorising_model(random_secrets, canary_repetitions=100):
  texts = [PREFIX + s for s in random_secrets] + [PREFIX + CANARY_SECRET] * canary_repetitions
  inputs, targets = encode(texts)
  model = keras.Sequential(
    [
      keras.Input((len(PREFIX) + 3,), dtype="int32"),
      keras.layers.Embedding(START + 1, 16),
      keras.layers.GRU(64, return_sequences=True),
      keras.layers.Dense(len(ALPHABET)),
    ]
  )
  model.compile(
    optimizer=keras.optimizers.Adam(0.01),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  model.fit(inputs, targets, batch_size=64, epochs=20, shuffle=True, verbose=0)
  return model


def log_perplexity(model):
  def score(texts):
    inputs, targets = encode(texts)
    log_probs = keras.ops.convert_to_numpy(keras.ops.log_softmax(model(inputs), axis=-1))
    return -np.take_along_axis(log_probs, targets[..., None], axis=-1).sum(axis=(1, 2))

  return score


def test_a_memorised_canary_is_exposed_and_unseen_secrets_are_not():
  rng = np.random.default_rng(0)
  random_secrets = [f"{n:03d}" for n in rng.integers(0, 1000, size=1000)]
  model = train_memorising_model(random_secrets)
  unseen = sorted(
    set(exposure.candidate_secrets(3, 0, 1000)) - set(random_secrets) - {CANARY_SECRET}
  )
  never_inserted = [str(s) for s in rng.choice(unseen, size=10, replace=False)]
  results = exposure.exposures(log_perplexity(model), PREFIX, 3, [CANARY_SECRET] + never_inserted)
  assert results[0].exposure > 8  # of at most log2(1000) = 9.97
  assert np.mean([r.exposure for r in results[1:]]) < 4
