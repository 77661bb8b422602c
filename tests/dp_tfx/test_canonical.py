"""Canonical JSON's bytes are stored in every digest and signature: they must never change."""

import hashlib
import math

import pytest

from dp_tfx.canonical import canonical_digest, canonical_json, sha256_digest


def test_keys_are_sorted_without_whitespace_and_non_ascii_escaped():
  assert canonical_json({"b": [1, 2.5], "a": "é"}) == b'{"a":"\\u00e9","b":[1,2.5]}'


def test_the_digest_is_the_sha256_of_those_bytes():
  expected = "sha256:" + hashlib.sha256(b'{"a":1}').hexdigest()
  assert canonical_digest({"a": 1}) == sha256_digest(b'{"a":1}') == expected


def test_nan_is_refused_only_where_asked():
  assert canonical_json({"x": math.nan}) == b'{"x":NaN}'
  with pytest.raises(ValueError):
    canonical_json({"x": math.inf}, allow_nan=False)
