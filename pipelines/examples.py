"""The example pipelines `dp-tfx pipeline --example NAME` runs: their data, module and defaults.

Each example is one user module plus a function that writes its data as TFRecords; the pipeline
itself (`dp_pipeline.create_pipeline`) is the same for all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Example:
  """One example pipeline.

  Attributes:
    name: what `--example` takes.
    pipeline_name: the pipeline's name in MLMD and Kubeflow ([a-z0-9-] only).
    module_path: the user module of the DPTrainer, the control and the auditor, by import path
      (so TFX imports the installed package instead of packaging a file for each step).
    write_data: (data_root, source, limit) -> path of the canary file, or None; writes the
      TFRecords under data_root/train and data_root/eval.
    dp_defaults: DPConfig fields the CLI uses unless told otherwise.
    hyperparameters: the module's custom_config defaults.
    hyperparameter_names: every custom_config key the module reads (others are refused).
    label_key: the label feature, for the TFX Evaluator's accuracy gate (None: no such gate).
    has_canaries: whether its data carries canaries for the exposure audit.
    default_output_dir: where `dp-tfx pipeline` writes unless told (one per example, so that
      their data and MLMD records stay apart).
  """

  name: str
  pipeline_name: str
  module_path: str
  write_data: Callable[[str, str, Optional[int]], Optional[str]]
  dp_defaults: Dict[str, float]
  hyperparameters: Dict[str, object]
  hyperparameter_names: Tuple[str, ...]
  label_key: Optional[str] = None
  default_output_dir: str = "output/pipeline"
  has_canaries: bool = False


def _write_mnist(data_root: str, source: str, limit: Optional[int]) -> None:
  from dp_tfx.pipelines import mnist_data

  mnist_data.write_mnist_tfrecords(data_root, source, limit)
  return None


def _write_lm(data_root: str, source: str, limit: Optional[int]) -> str:
  from dp_tfx.pipelines import lm_data

  limit = lm_data.DEFAULT_LIMIT if limit is None else limit
  return lm_data.write_lm_tfrecords(data_root, source, limit)["canary_file"]


MNIST = Example(
  name="mnist",
  pipeline_name="dp-mnist",
  module_path="dp_tfx.pipelines.mnist_model",
  write_data=_write_mnist,
  dp_defaults={"l2_norm_clip": 1.0, "noise_multiplier": 1.1, "batch_size": 200, "epochs": 15},
  hyperparameters={"learning_rate": 0.5, "momentum": 0.5},
  hyperparameter_names=("learning_rate", "momentum", "jit_compile"),
  label_key="label",
)

# The models the lm example's module builds (hyperparameter "architecture"; the first is the
# default).
LM_ARCHITECTURES = ("transformer", "lstm")

LM = Example(
  name="lm",
  pipeline_name="dp-char-lm",
  module_path="dp_tfx.pipelines.lm_model",
  write_data=_write_lm,
  # 32,000 sequences of 64 characters, 500 noisy steps (docs/lm-example.md has what they cost).
  dp_defaults={"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "batch_size": 512, "epochs": 8},
  hyperparameters={},
  hyperparameter_names=(
    "architecture",
    "learning_rate",
    "model_dim",
    "num_heads",
    "num_blocks",
    "jit_compile",
  ),
  default_output_dir="output/pipeline-lm",
  has_canaries=True,
)

EXAMPLES = {example.name: example for example in (MNIST, LM)}
