"""Canonical JSON: the one byte string of a value that dp_tfx hashes and signs.

A record is hashed or signed over its canonical JSON (keys sorted, no whitespace, UTF-8), never
over its text as written, so that a file's indentation or the order of its keys never changes
a digest or breaks a signature. Ledger records, Poisson batch manifests, resume states and
MLMD records are all written this way; their digests and signatures are stored, so these bytes
must never change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any, *, allow_nan: bool = True) -> bytes:
  """`value` as JSON with its keys sorted and no whitespace, UTF-8 encoded (non-ASCII text is
  escaped, so the bytes are ASCII).

  `allow_nan` is json.dumps's: with False, NaN or infinity raises ValueError (JSON has no such
  numbers) where a record's facts must be representable; True writes them as NaN and Infinity,
  as the records that never passed it always have.
  """
  return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=allow_nan).encode()


def sha256_digest(data: bytes) -> str:
  """ "sha256:" and the hex SHA-256 of `data`: how dp_tfx writes a digest."""
  return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_digest(value: Any, *, allow_nan: bool = True) -> str:
  """The sha256_digest of `value`'s canonical_json."""
  return sha256_digest(canonical_json(value, allow_nan=allow_nan))
