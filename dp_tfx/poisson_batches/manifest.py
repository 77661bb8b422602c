"""The manifest of a draw's batches: the facts the accountant needs (N, q, steps), each shard's
digest, and its signature; what the ledger's runs on the draw must agree with."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from dp_tfx import files, record_digest, signing
from dp_tfx.canonical import canonical_digest
from dp_tfx.checks import is_finite_number, is_int, unknown_fields
from dp_tfx.config import POISSON
from dp_tfx.poisson_batches.draws import draw_first_step, draw_steps

MANIFEST_FILE = "poisson_batches.json"
SIGNATURE_FILE = "poisson_batches.json.sig"
# 2: the manifest records the digest of the data it was drawn from (data_digest).
FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Shard:
  """One file of consecutive steps [first_step, last_step), a record each: `sampled` examples in
  all (padding aside), and the sha256 of the file's bytes."""

  file: str
  first_step: int
  last_step: int
  sampled: int
  sha256: str

  def __post_init__(self):
    if not (isinstance(self.file, str) and self.file and os.path.basename(self.file) == self.file):
      raise ValueError(
        f"a shard's file must be a file name in the batches directory; got {self.file!r}"
      )
    if not (
      is_int(self.first_step) and is_int(self.last_step) and 0 <= self.first_step < self.last_step
    ):
      raise ValueError(
        f"shard {self.file}: steps [{self.first_step!r}, {self.last_step!r}) are not a range"
      )
    if not (is_int(self.sampled) and self.sampled >= 0):
      raise ValueError(f"shard {self.file}: sampled must be an int >= 0; got {self.sampled!r}")
    if not (isinstance(self.sha256, str) and len(self.sha256) == 64):
      raise ValueError(f"shard {self.file}: {self.sha256!r} is not a sha256")


@dataclasses.dataclass(frozen=True)
class BatchManifest:
  """What a directory of Poisson batches holds, and the facts of the sampling that drew them.

  Attributes:
    dataset_size: N, the examples the samples were drawn from (counted exactly).
    batch_size: the expected batch size; sampling_rate q = batch_size / N.
    sampling_rate: each example's probability of joining each step.
    steps: the steps of the whole plan (a directory may hold a range of them).
    first_step, last_step: the steps this directory holds, [first_step, last_step).
    physical_batch_size: each step's records are a whole number of these.
    shards: the files, consecutive, covering [first_step, last_step) in order.
    source, split: the Examples artifact (its uri) and the split the samples were drawn from.
    draw: the draw's identity (`new_draw`), which every record names.
    data_digest: the digest of the split's records (dp_tfx.record_digest): the same data drawn
      again, under any name, has the same one (the draw is fresh each time).
  """

  dataset_size: int
  batch_size: int
  sampling_rate: float
  steps: int
  first_step: int
  last_step: int
  physical_batch_size: int
  shards: Tuple[Shard, ...]
  source: str
  split: str
  draw: str
  data_digest: str

  def __post_init__(self):
    for name in ("source", "split", "draw"):
      if not (isinstance(getattr(self, name), str) and getattr(self, name)):
        raise ValueError(
          f"BatchManifest.{name} must name the examples sampled; got {getattr(self, name)!r}"
        )
    for name in ("dataset_size", "batch_size", "steps", "physical_batch_size"):
      if not (is_int(getattr(self, name)) and getattr(self, name) >= 1):
        raise ValueError(f"BatchManifest.{name} must be an int >= 1; got {getattr(self, name)!r}")
    if not (
      is_finite_number(self.sampling_rate)
      and self.sampling_rate == self.batch_size / self.dataset_size
    ):
      raise ValueError(
        f"BatchManifest.sampling_rate {self.sampling_rate!r} is not batch_size / "
        f"dataset_size = {self.batch_size} / {self.dataset_size}"
      )
    if not (
      is_int(self.first_step)
      and is_int(self.last_step)
      and 0 <= self.first_step < self.last_step <= self.steps
    ):
      raise ValueError(
        f"BatchManifest steps [{self.first_step!r}, {self.last_step!r}) are not a "
        f"range within the plan's {self.steps} steps"
      )
    covered = self.first_step
    for shard in self.shards:
      if shard.first_step != covered:
        raise ValueError(
          f"BatchManifest: shard {shard.file} starts at step {shard.first_step}, not at {covered}"
        )
      covered = shard.last_step
    if covered != self.last_step:
      raise ValueError(f"BatchManifest: the shards end at step {covered}, not at {self.last_step}")
    if draw_first_step(self.draw) > self.first_step:
      raise ValueError(f"BatchManifest: draw {self.draw} starts after step {self.first_step}")
    if (
      record_digest.parse(self.data_digest, "BatchManifest.data_digest").count != self.dataset_size
    ):
      raise ValueError(
        f"BatchManifest.data_digest {self.data_digest} counts other records than "
        f"the dataset_size {self.dataset_size!r}"
      )

  def to_dict(self) -> dict:
    values = dataclasses.asdict(self)
    return {"format_version": FORMAT_VERSION, **values, "shards": list(values["shards"])}

  @classmethod
  def from_dict(cls, values: dict) -> "BatchManifest":
    values = dict(values)
    if values.pop("format_version", None) != FORMAT_VERSION:
      raise ValueError(
        f"unsupported Poisson batches format; this dp_tfx reads version {FORMAT_VERSION}"
      )
    error = unknown_fields(cls, values, "BatchManifest")
    if error is not None:
      raise error
    shards = values.pop("shards")
    if not isinstance(shards, list):
      raise ValueError(f"BatchManifest.shards must be a list; got {shards!r}")
    return cls(**values, shards=tuple(Shard(**shard) for shard in shards))

  def digest(self) -> str:
    """sha256 of the manifest's canonical JSON: names these batches (and, through the shards'
    digests, their every byte) in a ledger."""
    return canonical_digest(self.to_dict())

  @property
  def fingerprint(self) -> str:
    """What a ledger records as the dataset fingerprint of a run on these samples."""
    return f"poisson-draw:{self.draw}"

  def check_recorded_runs(self, segments: Sequence) -> None:
    """Refuses ledger segments (dp_tfx.ledger.Segment) that do not describe runs on this draw as
    it is: each of the draw's segments must have its N, q, planned steps and physical batch, and
    together they cannot have taken more steps than the draw holds (a step taken twice: the
    second time its sample is no longer a fresh Poisson sample). A stream takes the draw's steps
    in order from the first no run recorded, so a step cannot be skipped.

    Raises:
      ValueError: naming the first difference; also if no segment is on this draw.
    """
    mine = [segment for segment in segments if segment.dataset_fingerprint == self.fingerprint]
    if not mine:
      raise ValueError(f"the ledger records no run on the Poisson batches of draw {self.draw}")
    for segment in mine:
      recorded = (
        segment.sampling,
        segment.dataset_size,
        segment.planned_steps,
        segment.physical_batch_size,
      )
      expected = (POISSON, self.dataset_size, self.steps, self.physical_batch_size)
      if recorded != expected or not math.isclose(
        segment.sampling_rate, self.sampling_rate, rel_tol=1e-12
      ):
        raise ValueError(
          f"segment {segment.segment_id} of the ledger describes a run on the Poisson batches "
          f"of draw {self.draw} with (sampling, N, planned steps, physical batch) {recorded} "
          f"and q {segment.sampling_rate}; the batches' manifest says {expected} and q "
          f"{self.sampling_rate}"
        )
    taken = sum(segment.noisy_steps for segment in mine)
    first, last = draw_steps(self.draw)
    if taken > last - first:
      raise ValueError(
        f"the ledger records {taken} steps on the Poisson batches of draw "
        f"{self.draw}, which hold {last - first}: a step was taken twice"
      )

  def save(self, directory, key: Optional[bytes] = None) -> str:
    """Writes the manifest; with a ledger key (dp_tfx.signing), its digest's signature beside it,
    which a PoissonBatchStream opened with the key set requires."""
    if key is not None:
      files.write_text(os.path.join(os.fspath(directory), SIGNATURE_FILE), self.signature(key))
    return files.write_text(
      os.path.join(os.fspath(directory), MANIFEST_FILE),
      json.dumps(self.to_dict(), indent=2, sort_keys=True),
    )

  def signature(self, key: bytes) -> str:
    """The manifest's digest signed with the ledger key `key`."""
    return signing.sign(self.digest().encode(), key)

  def check_signature(self, signature: Optional[str], key: bytes, where: str) -> None:
    """Raises ValueError unless `signature` (beside the manifest, or in MLMD) is this manifest's
    digest signed with `key`: what a manifest edited to a larger N (a smaller q) cannot forge."""
    if not signing.is_valid(self.digest().encode(), signature, key):
      raise ValueError(
        f"the Poisson batches in {where} are not signed with the ledger key "
        f"({'a wrong signature' if signature else 'no signature'}): with a key "
        "set, only batches a PoissonBatchGen holding it wrote are used"
      )

  @staticmethod
  def signature_beside(directory) -> Optional[str]:
    """The signature `save` wrote beside the manifest in `directory`, if any."""
    path = os.path.join(os.fspath(directory), SIGNATURE_FILE)
    return files.read_text(path).strip() if files.exists(path) else None

  @classmethod
  def load(cls, directory) -> "BatchManifest":
    """Reads `{directory}/poisson_batches.json`; anything missing or malformed raises
    ValueError."""
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    try:
      return cls.from_dict(json.loads(files.read_text(path)))
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError) as error:
      raise ValueError(f"cannot read the Poisson batches manifest at {path}: {error}") from None
