"""Poisson batches drawn ahead, in files: what PoissonBatchGen writes and a streaming trainer reads.

For data larger than one machine's memory the Poisson samples of all steps are drawn on Beam, as
Chua et al. do ("Scalable DP-SGD: Shuffling vs. Poisson Subsampling", NeurIPS 2024): a Map draws,
for each example, the steps whose sample includes it; a group-by-step collects each step's sample;
each sample is padded. Each example joins each step independently with probability q, drawn as
geometric gaps between its inclusions (`inclusion_steps`: O(expected inclusions), not O(steps)).

A step's record holds its sample, then masked copies of a padding example up to a whole number of
physical batches (at least one: a step with an empty sample still adds its noise). Nothing is
truncated. Steps are written in order, a record each, in TFRecord shards of consecutive steps
(memory to read one: a step's sample); the manifest
(`BatchManifest`) records the facts the accountant needs (N, q, steps) and each shard's digest.
The sampling randomness comes from the OS and is written nowhere.
"""

from dp_tfx.poisson_batches.draws import draw_first_step, draw_steps, inclusion_steps, new_draw
from dp_tfx.poisson_batches.manifest import (
  FORMAT_VERSION,
  MANIFEST_FILE,
  SIGNATURE_FILE,
  BatchManifest,
  Shard,
)
from dp_tfx.poisson_batches.records import (
  DRAW_FEATURE,
  EXAMPLES_FEATURE,
  MASK_FEATURE,
  RECORD_SPEC,
  STEP_FEATURE,
  parse_step_record,
  shard_name,
  step_record,
  write_shard,
)
from dp_tfx.poisson_batches.stream import DecodeFn, PoissonBatchStream

__all__ = [
  "BatchManifest",
  "DRAW_FEATURE",
  "DecodeFn",
  "EXAMPLES_FEATURE",
  "FORMAT_VERSION",
  "MANIFEST_FILE",
  "MASK_FEATURE",
  "PoissonBatchStream",
  "RECORD_SPEC",
  "SIGNATURE_FILE",
  "STEP_FEATURE",
  "Shard",
  "draw_first_step",
  "draw_steps",
  "inclusion_steps",
  "new_draw",
  "parse_step_record",
  "shard_name",
  "step_record",
  "write_shard",
]
