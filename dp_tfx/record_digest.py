"""An order-independent digest of a data set's serialized records.

The budget root refuses the same training data under a second data source name
(dp_tfx.budget.claim_data): a new name must not open a fresh budget for the same people. Runs on
the same examples must get the same digest however the records are ordered, sharded or named, and
whether they train in memory or on a Poisson draw (whose sample is fresh each time): so the digest
is of the multiset of records, the count and the sum modulo 2**256 of every record's SHA-256.
hashlib offers no multiset hash, and a sum can be computed on Beam workers and merged.

It finds the same data reached again by mistake or by a rename; whoever can write the budget
root can remove whole histories, so it is not meant to bind an adversary with that access.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterable

PREFIX = "records-sha256-sum"
_MODULUS = 1 << 256
_TEXT = re.compile(PREFIX + r":([0-9]+):([0-9a-f]{64})")


@dataclasses.dataclass
class RecordDigest:
  """The count of records and the sum of their SHA-256s so far; merge partial digests with `+`."""

  count: int = 0
  total: int = 0

  def add(self, record: bytes) -> "RecordDigest":
    self.count += 1
    self.total = (self.total + int.from_bytes(hashlib.sha256(record).digest(), "big")) % _MODULUS
    return self

  def __add__(self, other: "RecordDigest") -> "RecordDigest":
    return RecordDigest(self.count + other.count, (self.total + other.total) % _MODULUS)

  def text(self) -> str:
    """The form a manifest and the budget root record: `records-sha256-sum:<count>:<hex>`."""
    return f"{PREFIX}:{self.count}:{self.total:064x}"


def of_records(records: Iterable[bytes]) -> str:
  """The digest text of `records`, in any order."""
  digest = RecordDigest()
  for record in records:
    digest.add(record)
  return digest.text()


def parse(text: object, where: str) -> RecordDigest:
  """The digest whose text is `text`.

  Raises:
    ValueError: naming `where`, for anything but a record digest's text.
  """
  match = _TEXT.fullmatch(text) if isinstance(text, str) else None
  if match is None:
    raise ValueError(
      f"{where} must be a record digest ({PREFIX}:<count>:<64 hex digits>); got {text!r}"
    )
  return RecordDigest(int(match.group(1)), int(match.group(2), 16))
