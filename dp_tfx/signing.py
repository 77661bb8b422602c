"""Ledger signatures: an HMAC-SHA256 of each record with a key the trainer and evaluator hold.

A content hash shows that a record was changed, but anyone can recompute it; the MLMD record of
the trainer's hash covers the ledger artifact, not the history's segment files. A signature can
only be made with the key: with `PrivacyPolicy(require_signature=True)` the evaluator refuses
every ledger and segment that is unsigned or signed with another key, so whoever can write to the
pipeline root (a bucket, a shared disk) but does not hold the key cannot forge or lower a record.

The key comes from the environment, where a platform puts secrets: DP_TFX_LEDGER_KEY holds it,
or DP_TFX_LEDGER_KEY_FILE names a file (local or gs://...) that does, e.g. a Kubernetes secret
mounted into the Kubeflow step. Signing itself is Python's hmac; only the key's source is ours.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from typing import Optional

from dp_tfx import files

KEY_ENV = "DP_TFX_LEDGER_KEY"
KEY_FILE_ENV = "DP_TFX_LEDGER_KEY_FILE"
MIN_KEY_BYTES = 16  # 128 bits, the least HMAC-SHA256 should be keyed with
_PREFIX = "hmac-sha256:"


class SigningKeyError(ValueError):
  """The signing key is configured wrongly (unreadable file, too short, set twice)."""


def configured_key() -> Optional[bytes]:
  """The ledger key from DP_TFX_LEDGER_KEY or DP_TFX_LEDGER_KEY_FILE; None when neither is set.

  Raises:
    SigningKeyError: if both are set, the file cannot be read, or the key is too short.
  """
  return _key(os.environ.get(KEY_ENV) or None, os.environ.get(KEY_FILE_ENV) or None)


@functools.lru_cache(maxsize=4)  # the ledger signs at every step; read a key file once
def _key(value: Optional[str], path: Optional[str]) -> Optional[bytes]:
  if value and path:
    raise SigningKeyError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
  if path:
    try:
      key = files.read_bytes(path).strip()
    except OSError as error:
      raise SigningKeyError(
        f"the ledger key file {path} ({KEY_FILE_ENV}) cannot be read: {error}"
      ) from None
    where = f"the key file {path}"
  elif value:
    key, where = value.encode("utf-8"), KEY_ENV
  else:
    return None
  if len(key) < MIN_KEY_BYTES:
    raise SigningKeyError(
      f"{where} holds a ledger key of {len(key)} bytes; use at least "
      f"{MIN_KEY_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
    )
  return key


def sign(message: bytes, key: bytes) -> str:
  return _PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def is_valid(message: bytes, signature, key: bytes) -> bool:
  """True when `signature` is `message`'s signature with `key` (compared in constant time)."""
  return isinstance(signature, str) and hmac.compare_digest(signature, sign(message, key))
