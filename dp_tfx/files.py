"""File I/O through tf.io.gfile: ledgers, audits and reports on any filesystem TFX artifacts use.

On Kubeflow or Vertex the pipeline root, and so every artifact URI, is gs://... (or s3://,
hdfs://); pathlib and open() see only local disks. Paths here are strings joined with
os.path.join, which keeps a URL's scheme intact where pathlib would fold "gs://" into "gs:/".
TensorFlow is imported on first use, not with the modules that use this one, so `dp-tfx`
argument errors stay one line.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Optional


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf


def _gfile():
  return _tf().io.gfile


def exists(path) -> bool:
  return _gfile().exists(os.fspath(path))


def is_dir(path) -> bool:
  return _gfile().isdir(os.fspath(path))


def read_bytes(path) -> bytes:
  """The file's bytes; a missing or unreadable file raises OSError, as open() would."""
  tf = _tf()
  try:
    with _gfile().GFile(os.fspath(path), "rb") as handle:
      return handle.read()
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f"no file at {path}") from None
  except tf.errors.OpError as error:
    raise OSError(f"cannot read {path}: {error.message}") from None


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


# Filesystems whose rename replaces the target whole: a local disk (atomic rename) and object
# stores, where a rename is a copy and an object is replaced only whole ("ram" is TensorFlow's
# in-memory test filesystem). HDFS deletes the target before renaming onto it.
WHOLE_REPLACE_SCHEMES = ("", "gs", "s3", "ram")


def scheme(path) -> str:
  """'gs' for gs://bucket/x, '' for a local path."""
  path = os.fspath(path)
  return path.split("://", 1)[0] if "://" in path else ""


def _temporary_beside(path: str) -> str:
  return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}-{uuid.uuid4().hex}")


def write_bytes(path, data: bytes) -> str:
  """Writes `data` to `path` (creating its directory) through a temporary file and a rename, so
  on WHOLE_REPLACE_SCHEMES a crash never leaves a half-written file where a whole one was."""
  path = os.fspath(path)
  gfile = _gfile()
  gfile.makedirs(os.path.dirname(path) or ".")
  temporary = _temporary_beside(path)
  try:
    with gfile.GFile(temporary, "wb") as handle:
      handle.write(data)
    gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    if gfile.exists(temporary):  # only on failure: the ledger flushes here every step
      gfile.remove(temporary)
    raise
  return path


def write_text(path, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def makedirs(directory) -> None:
  _gfile().makedirs(os.fspath(directory))


def listdir(directory) -> list:
  """The names in `directory` (files and subdirectories, without a trailing '/'), sorted; [] when
  it does not exist."""
  directory = os.fspath(directory)
  if not _gfile().isdir(directory):
    return []
  return sorted(name.rstrip("/") for name in _gfile().listdir(directory))


def age_seconds(path) -> Optional[float]:
  """Seconds since the file was last modified; None if it no longer exists (a temporary renamed
  into place between a directory listing and this call)."""
  import time  # pylint: disable=import-outside-toplevel

  try:
    return time.time() - _gfile().stat(os.fspath(path)).mtime_nsec / 1e9
  except _tf().errors.NotFoundError:
    return None


# Filesystems that keep no modification times (TensorFlow's in-memory one reports 0 for all).
NO_MODIFICATION_TIME_SCHEMES = ("ram",)


def modified_time(path) -> Optional[float]:
  """When the storage last modified the file, in seconds since the epoch on the storage's clock
  (a local disk's, an object store's: not the clock of whoever wrote it); None only on
  NO_MODIFICATION_TIME_SCHEMES. Elsewhere the time is returned as the storage gives it, 0 or
  in the future included: read as "unknown", it would hold a killed run's reservation for ever
  (the caller judges it). A missing or unreadable file raises OSError."""
  tf = _tf()
  try:
    nanoseconds = _gfile().stat(os.fspath(path)).mtime_nsec
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f"no file at {path}") from None
  except tf.errors.OpError as error:
    raise OSError(f"cannot stat {path}: {error.message}") from None
  return None if scheme(path) in NO_MODIFICATION_TIME_SCHEMES else nanoseconds / 1e9


def normalised(path) -> str:
  """A local path made absolute and normal, so that two spellings of one file compare equal
  (the working directory may change meanwhile); a URL (gs://...) as it is."""
  path = os.fspath(path)
  return path if scheme(path) else os.path.abspath(path)


def create_new(path, data: bytes) -> str:
  """Writes `data` to `path` like write_bytes, but never replaces a file already there (a name
  meant to be unique was not: FileExistsError, nothing overwritten).

  Locally by a hard link of the written temporary file, which the OS refuses atomically where
  the name exists (O_EXCL's guarantee, for a whole file); elsewhere by a rename that checks
  first, so the names given must be unique (segment ids carry a full uuid4).
  """
  path = os.fspath(path)
  if scheme(path):
    if exists(path):
      raise FileExistsError(f"{path} exists already; it is not replaced")
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(path))
    temporary = _temporary_beside(path)
    try:
      with gfile.GFile(temporary, "wb") as handle:
        handle.write(data)
      gfile.rename(temporary, path, overwrite=False)
    finally:
      if gfile.exists(temporary):
        gfile.remove(temporary)
    return path
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = _temporary_beside(path)
  try:
    with open(temporary, "wb") as handle:
      handle.write(data)
    try:
      os.link(temporary, path)
    except FileExistsError:
      raise FileExistsError(f"{path} exists already; it is not replaced") from None
  finally:
    os.remove(temporary)
  return path


def files_under(directory) -> list:
  """Relative '/'-separated paths of every file under `directory`, in the order pathlib sorts
  them (by path components), so digests match those computed from local paths."""
  root = os.fspath(directory).rstrip("/")
  found = []
  for parent, _, names in _gfile().walk(root):
    relative_parent = parent[len(root) :].strip("/")
    found.extend(f"{relative_parent}/{name}" if relative_parent else name for name in names)
  return sorted(found, key=lambda relative: relative.split("/"))


def sha256(path) -> str:
  """sha256 of a file's bytes (any tf.io.gfile filesystem), read in blocks."""
  digest = hashlib.sha256()
  with _gfile().GFile(os.fspath(path), "rb") as stream:
    for block in iter(lambda: stream.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
