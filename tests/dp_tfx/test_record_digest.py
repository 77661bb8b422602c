"""The record digest knows a data set by its records, in any order or grouping, and nothing else."""

import random

import pytest

from dp_tfx import record_digest

RECORDS = [b"record-%03d" % i for i in range(200)]


def test_the_same_records_in_any_order_or_grouping_have_one_digest():
  shuffled = RECORDS[:]
  random.Random(3).shuffle(shuffled)
  assert record_digest.of_records(shuffled) == record_digest.of_records(RECORDS)
  # Partial digests (as Beam's workers compute them), merged in any order.
  parts = [record_digest.RecordDigest() for _ in range(3)]
  for index, record in enumerate(shuffled):
    parts[index % 3].add(record)
  merged = parts[2] + parts[0] + parts[1]
  assert merged.text() == record_digest.of_records(RECORDS)


def test_one_record_added_removed_or_changed_changes_the_digest():
  digest = record_digest.of_records(RECORDS)
  assert record_digest.of_records(RECORDS[:-1]) != digest
  assert record_digest.of_records(RECORDS + [b"one more"]) != digest
  assert record_digest.of_records(RECORDS[:-1] + [b"record-19x"]) != digest
  # A record twice is another multiset: the count and the sum both move.
  assert record_digest.of_records(RECORDS + RECORDS[:1]) != digest


def test_the_text_is_the_count_and_a_256_bit_sum_and_parses_back():
  text = record_digest.of_records(RECORDS)
  prefix, count, total = text.split(":")
  assert (prefix, count, len(total)) == ("records-sha256-sum", "200", 64)
  parsed = record_digest.parse(text, "here")
  assert parsed.count == 200 and parsed.text() == text
  assert record_digest.of_records([]) == "records-sha256-sum:0:" + "0" * 64


@pytest.mark.parametrize(
  "text",
  [
    None,
    3,
    "",
    "records-sha256-sum:1:abc",
    "sha256:" + "0" * 64,
    "records-sha256-sum:-1:" + "0" * 64,
    "records-sha256-sum:1:" + "G" * 64,
  ],
)
def test_anything_else_is_refused_naming_where_it_came_from(text):
  with pytest.raises(ValueError, match="the manifest's digest must be a record digest"):
    record_digest.parse(text, "the manifest's digest")
