"""Canaries: distinct seeded secrets, their texts, and a file that is validated on load."""

import json

import pytest

from dp_tfx.audit.canaries import Canary, CanaryFormat, load_canaries, make_canaries, save_canaries


def test_canaries_have_the_asked_repetitions_and_distinct_secrets():
  fmt = CanaryFormat(digits=3)
  canaries = make_canaries(fmt, repetitions=(1, 4, 16), per_repetition=2, references=10, seed=3)
  assert [c.repetitions for c in canaries] == [1, 1, 4, 4, 16, 16] + [0] * 10
  assert len({c.secret for c in canaries}) == 16
  assert all(len(c.secret) == 3 and c.secret.isdigit() for c in canaries)
  assert canaries == make_canaries(fmt, (1, 4, 16), 2, 10, seed=3)
  assert canaries != make_canaries(fmt, (1, 4, 16), 2, 10, seed=4)


def test_a_space_can_be_used_up_but_not_overfilled():
  fmt = CanaryFormat(digits=1)
  assert {c.secret for c in make_canaries(fmt, (1,), per_repetition=5, references=5)} == set(
    "0123456789"
  )
  with pytest.raises(ValueError, match="do not fit in a space of 10"):
    make_canaries(fmt, (1,), per_repetition=5, references=6)


@pytest.mark.parametrize("repetitions", [(0,), (1, -2), (1.5,)])
def test_repetitions_must_be_positive_counts(repetitions):
  with pytest.raises(ValueError, match="repetitions must be ints >= 1"):
    make_canaries(CanaryFormat(), repetitions)


def test_text_is_prefix_and_secret_of_the_right_digits():
  fmt = CanaryFormat(prefix="my pin is ", digits=5)
  assert fmt.text("00042") == "my pin is 00042"
  assert fmt.space_size == 100_000
  for secret in ("0042", "000042", "0004a", 42):
    with pytest.raises(ValueError, match="5 decimal digits"):
      fmt.text(secret)
  with pytest.raises(ValueError, match="digits must be an int in"):
    CanaryFormat(digits=0)


def test_saved_canaries_load_back(tmp_path):
  fmt = CanaryFormat(prefix="the code is ", digits=6)
  canaries = make_canaries(fmt, seed=1)
  path = save_canaries(tmp_path / "canaries.json", fmt, canaries)
  assert load_canaries(path) == (fmt, canaries)


def _duplicate_a_secret(body):
  body["canaries"][1]["secret"] = body["canaries"][0]["secret"]


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda body: body.update(format_version=2), "format_version must be 1"),
    (lambda body: body.update(digits="5"), "digits must be an int"),
    (lambda body: body.update(canaries={}), "'canaries' must be a list"),
    (lambda body: body["canaries"][0].pop("repetitions"), "canary 0 must be an object"),
    (lambda body: body["canaries"][0].update(secret="1234"), "canary 0: a secret must be 5"),
    (lambda body: body["canaries"][2].update(repetitions=-1), "canary 2: repetitions must be"),
    (_duplicate_a_secret, "the secrets must be distinct"),
  ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, edit, message):
  path = tmp_path / "canaries.json"
  save_canaries(path, CanaryFormat(), make_canaries(CanaryFormat()))
  body = json.loads(path.read_text())
  edit(body)
  path.write_text(json.dumps(body))
  with pytest.raises(ValueError, match=message):
    load_canaries(path)


def test_a_file_that_is_not_json_is_refused(tmp_path):
  path = tmp_path / "canaries.json"
  path.write_text("{")
  with pytest.raises(ValueError, match="is not valid JSON"):
    load_canaries(path)


def test_invalid_canaries_are_not_saved(tmp_path):
  with pytest.raises(ValueError, match="distinct"):
    save_canaries(
      tmp_path / "canaries.json", CanaryFormat(), [Canary("12345", 1), Canary("12345", 0)]
    )
  assert not (tmp_path / "canaries.json").exists()
