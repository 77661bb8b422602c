"""The document every ledger record is written as: its body, a content hash and a signature.

A ledger file and a segment file of a ledger history are the same envelope around different
bodies: `{"body": ..., "content_hash": "sha256:...", "signature": ...}`. The hash (SHA-256 of the
body's canonical JSON) makes accidental or naive edits evident; it is not a signature against
someone who recomputes it. The signature (an HMAC with the ledger key, dp_tfx.signing) is, and
is written whenever a key is configured; a reader given the key refuses any record not signed
with it. Hashed and signed over canonical JSON, never over the text as written, so that the
indentation of a file or the order of its keys never matters.
"""

from __future__ import annotations

import json
from typing import Optional

from dp_tfx import signing
from dp_tfx.canonical import canonical_json, sha256_digest
from dp_tfx.ledger.errors import LedgerError, LedgerIntegrityError, _check


def _document(body: dict) -> str:
  """A ledger or segment file: the body, its content hash and, when a ledger key is configured
  (see dp_tfx.signing), its signature."""
  document = {"body": body, "content_hash": _hash_body(body)}
  key = signing.configured_key()
  if key is not None:
    document["signature"] = signing.sign(_canonical(body), key)
  return json.dumps(document, indent=2, sort_keys=True)


def _verified_body(text: str, key: Optional[bytes] = None) -> tuple:
  """(body, signed): the body of a ledger or segment document whose content hash matches it (and,
  with `key`, that is signed with that key), and whether it carries a signature."""
  try:
    document = json.loads(text)
  except (ValueError, RecursionError) as error:  # JSONDecodeError, huge integers, deep nesting
    raise LedgerError(f"the ledger is not valid JSON: {str(error)[:200]}") from None
  _check(
    isinstance(document, dict)
    and isinstance(document.get("body"), dict)
    and isinstance(document.get("content_hash"), str),
    "the ledger must be a JSON object with 'body' and 'content_hash'",
  )
  body = document["body"]
  if _hash_body(body) != document["content_hash"]:
    raise LedgerIntegrityError(
      "the ledger's content does not match its content_hash: it was modified after it was written"
    )
  if key is not None and not signing.is_valid(_canonical(body), document.get("signature"), key):
    raise LedgerIntegrityError(
      "the record is unsigned or its signature does not match the ledger key: "
      + (
        "it was written without a key"
        if "signature" not in document
        else "it was changed, or signed with another key"
      )
    )
  return body, "signature" in document


def _canonical(body: dict) -> bytes:
  try:
    return canonical_json(body, allow_nan=False)
  except ValueError as error:  # NaN or infinity smuggled into the facts
    raise LedgerError(f"the ledger holds a value JSON cannot represent: {error}") from None


def _hash_body(body: dict) -> str:
  return sha256_digest(_canonical(body))


def _check_key_kept(signed: bool, where: str) -> None:
  """Raises LedgerError if `where` holds signed records and no ledger key is set: a run that
  forgot the key would write unsigned records there, which every later run that requires
  signatures refuses, for good. (Reading, for a report, needs no key.)"""
  if signed and signing.configured_key() is None:
    raise LedgerError(
      f"{where} holds signed records, but no ledger key is set ({signing.KEY_ENV} or "
      f"{signing.KEY_FILE_ENV}): this run's records would be unsigned, and every run that "
      "requires signatures would refuse them for good. Set the key it was signed with"
    )
