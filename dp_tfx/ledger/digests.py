"""Digests that tie a ledger to what it describes: the training data and the exported model.

A ledger records both (its segments' `dataset_fingerprint`, its `model_digest`), so a ledger
paired with other data or another model is a detectable mismatch rather than a silent one.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from dp_tfx import files
from dp_tfx.ledger.errors import LedgerError


def dataset_fingerprint(*arrays: Any) -> str:
  """SHA-256 over the shapes, dtypes and bytes of the training arrays (nested dicts allowed)."""
  digest = hashlib.sha256()

  def feed(value):
    if isinstance(value, dict):
      for key in sorted(value):
        digest.update(str(key).encode())
        feed(value[key])
      return
    array = np.ascontiguousarray(np.asarray(value))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())

  for array in arrays:
    feed(array)
  return "sha256:" + digest.hexdigest()


def directory_digest(directory: os.PathLike | str) -> str:
  """SHA-256 over the relative paths and bytes of every file under `directory` (an exported model).

  The ledger records it, so a ledger paired with any other model is a detectable mismatch.
  """
  root = os.fspath(directory)
  if not files.is_dir(root):
    raise LedgerError(f"no model directory at {root}")
  digest = hashlib.sha256()
  for relative in files.files_under(root):
    digest.update(relative.encode() + b"\0")
    digest.update(files.read_bytes(os.path.join(root, relative)))
  return "sha256:" + digest.hexdigest()
