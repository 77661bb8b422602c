"""Canaries for the Secret Sharer exposure test: random secrets inserted into training text.

Carlini et al. 2019 measure memorisation by inserting `prefix + secret` (e.g. "my pin is 52719")
into the training data a known number of times. A model that memorises ranks the inserted secret
above the other 10**digits candidates (see `exposure`); DP training bounds how far one sequence can
move the model, so the exposure of a canary inserted once stays near that of a secret never seen.
The never-inserted *reference* canaries (repetitions 0) measure that baseline on the same model.

The canaries are chosen before training and saved beside the training data, so that the audit
after training knows which secrets to look for, and how often each was inserted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from dp_tfx import files
from dp_tfx.checks import is_int

FORMAT_VERSION = 1
# Secrets are drawn as int64 numbers below 10**digits.
MAX_DIGITS = 18


@dataclasses.dataclass(frozen=True)
class CanaryFormat:
  """What a canary looks like: `prefix` followed by a secret of `digits` decimal digits.

  Attributes:
    prefix: the fixed text before the secret; the model sees it, so the secret is its continuation.
    digits: the secret's length; the candidate space holds 10**digits secrets.
  """

  prefix: str = "my pin is "
  digits: int = 5

  def __post_init__(self):
    if not isinstance(self.prefix, str):
      raise ValueError(f"CanaryFormat.prefix must be a string; got {self.prefix!r}")
    if not (is_int(self.digits) and 1 <= self.digits <= MAX_DIGITS):
      raise ValueError(
        f"CanaryFormat.digits must be an int in [1, {MAX_DIGITS}]; got {self.digits!r}"
      )

  @property
  def space_size(self) -> int:
    """The number of candidate secrets, 10**digits."""
    return 10**self.digits

  def text(self, secret: str) -> str:
    """The canary text of `secret`: prefix + secret.

    Raises:
      ValueError: if `secret` is not exactly `digits` decimal digits.
    """
    if not (
      isinstance(secret, str)
      and len(secret) == self.digits
      and all(c in "0123456789" for c in secret)
    ):
      raise ValueError(f"a secret must be {self.digits} decimal digits; got {secret!r}")
    return self.prefix + secret


@dataclasses.dataclass(frozen=True)
class Canary:
  """One secret and how often it was inserted into the training data.

  Attributes:
    secret: the digits after the prefix.
    repetitions: times inserted, each as its own training sequence; 0 for a reference canary that
      was never inserted.
  """

  secret: str
  repetitions: int


def make_canaries(
  fmt: CanaryFormat,
  repetitions: Sequence[int] = (1, 4, 16),
  per_repetition: int = 2,
  references: int = 10,
  seed: int = 0,
) -> list[Canary]:
  """`per_repetition` canaries for each count in `repetitions`, then `references` never inserted.

  All secrets are distinct and drawn uniformly from the format's space (seeded), so that no
  canary is more guessable than a random candidate before training.

  Args:
    fmt: the canary format.
    repetitions: the insertion counts to test, each >= 1.
    per_repetition: canaries per insertion count, >= 0.
    references: canaries inserted 0 times, >= 0: the exposure of a secret the model never saw.
    seed: seeds the secrets.

  Raises:
    ValueError: for bad counts, or more canaries than the space has secrets.
  """
  if not all(is_int(r) and r >= 1 for r in repetitions):
    raise ValueError(
      f"repetitions must be ints >= 1 (references are the ones inserted 0 times); "
      f"got {list(repetitions)!r}"
    )
  for name, value in (("per_repetition", per_repetition), ("references", references)):
    if not (is_int(value) and value >= 0):
      raise ValueError(f"{name} must be an int >= 0; got {value!r}")
  counts = [r for r in repetitions for _ in range(per_repetition)] + [0] * references
  if len(counts) > fmt.space_size:
    raise ValueError(
      f"{len(counts)} distinct canaries do not fit in a space of "
      f"{fmt.space_size} secrets; use more digits"
    )
  numbers = np.random.default_rng(seed).choice(fmt.space_size, size=len(counts), replace=False)
  return [
    Canary(secret=f"{int(number):0{fmt.digits}d}", repetitions=count)
    for number, count in zip(numbers, counts)
  ]


def save_canaries(path: os.PathLike | str, fmt: CanaryFormat, canaries: Sequence[Canary]) -> str:
  """Writes the format and the canaries as JSON (validated first, so a saved file always loads)."""
  body = {
    "format_version": FORMAT_VERSION,
    "prefix": fmt.prefix,
    "digits": fmt.digits,
    "canaries": [dataclasses.asdict(canary) for canary in canaries],
  }
  _parse(body, path)
  return files.write_text(path, json.dumps(body, indent=1) + "\n")


def load_canaries(path: os.PathLike | str) -> tuple[CanaryFormat, list[Canary]]:
  """Reads what `save_canaries` wrote.

  Raises:
    ValueError: for a file that is not valid JSON or does not describe valid, distinct canaries.
  """
  try:
    body = json.loads(files.read_text(path))
  except json.JSONDecodeError as error:
    raise ValueError(f"canaries file {path} is not valid JSON: {error}") from None
  return _parse(body, path)


def _parse(body: Any, path) -> tuple[CanaryFormat, list[Canary]]:
  """The format and canaries of a JSON body; one place that says what a valid file holds."""

  def check(condition: bool, message: str):
    if not condition:
      raise ValueError(f"canaries file {path}: {message}")

  check(isinstance(body, dict), "the top level must be a JSON object")
  check(
    body.get("format_version") == FORMAT_VERSION,
    f"format_version must be {FORMAT_VERSION}; got {body.get('format_version')!r}",
  )
  try:
    fmt = CanaryFormat(prefix=body.get("prefix"), digits=body.get("digits"))
  except ValueError as error:
    raise ValueError(f"canaries file {path}: {error}") from None
  entries = body.get("canaries")
  check(isinstance(entries, list), "'canaries' must be a list")
  canaries = []
  for index, entry in enumerate(entries):
    check(
      isinstance(entry, dict) and set(entry) == {"secret", "repetitions"},
      f"canary {index} must be an object with 'secret' and 'repetitions'; got {entry!r}",
    )
    try:
      fmt.text(entry["secret"])
    except ValueError as error:
      raise ValueError(f"canaries file {path}: canary {index}: {error}") from None
    check(
      is_int(entry["repetitions"]) and entry["repetitions"] >= 0,
      f"canary {index}: repetitions must be an int >= 0; got {entry['repetitions']!r}",
    )
    canaries.append(Canary(secret=entry["secret"], repetitions=entry["repetitions"]))
  secrets = [canary.secret for canary in canaries]
  check(len(set(secrets)) == len(secrets), "the secrets must be distinct")
  return fmt, canaries
