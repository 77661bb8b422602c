"""`dp-tfx demo`: the MNIST example's DP training with the Keras API alone, without TFX.

Trains the TF Privacy tutorial CNN with per-example clipping and Poisson sampling on the 4,000
embedded training digits, evaluates on the 1,000 held-out ones, and reports epsilon from the
ledger that training wrote. The configuration and the optimizer are the MNIST example's
(`examples.MNIST`, `mnist_model.compile_kwargs`), so the demo, the pipeline and the utility
benchmark train the same way. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import pathlib
import time
from typing import Optional

from dp_tfx import datasets, models
from dp_tfx.components.user_module import TrainerContext
from dp_tfx.config import DPConfig
from dp_tfx.keras import make_private
from dp_tfx.pipelines import mnist_model
from dp_tfx.pipelines.examples import MNIST

DEMO_DELTA = 1e-5
DEMO_EPOCHS = MNIST.dp_defaults["epochs"]
OUTPUT_DIR = pathlib.Path("output") / "demo"


def demo_config(epochs: int = DEMO_EPOCHS, seed: Optional[int] = None) -> DPConfig:
  return DPConfig(**{**MNIST.dp_defaults, "epochs": epochs}, delta=DEMO_DELTA, seed=seed)


def demo_compile_kwargs() -> dict:
  """The MNIST module's optimizer, loss and metrics with the example's hyperparameters."""
  return mnist_model.compile_kwargs(TrainerContext(hyperparameters=dict(MNIST.hyperparameters)))


def run(
  epochs: Optional[int] = None,
  output_dir: pathlib.Path = OUTPUT_DIR,
  verbose=2,
  seed: Optional[int] = None,
) -> dict:
  """Trains, evaluates and returns the figures: accuracy, epsilon, delta, steps, paths."""
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist(datasets.EMBEDDED)
  output_dir = pathlib.Path(output_dir)
  ledger_path = output_dir / "privacy_ledger.json"
  if ledger_path.exists():
    ledger_path.unlink()  # a fresh demo run; a real job keeps its ledger (every step counts)
  dp_model = make_private(
    models.tutorial_cnn(), demo_config(epochs or DEMO_EPOCHS, seed), ledger_path=ledger_path
  )
  dp_model.compile(**demo_compile_kwargs())  # jit_compile "auto": XLA on accelerators only
  started = time.time()
  dp_model.fit(x_train, y_train, validation_data=(x_test, y_test), verbose=verbose)
  seconds = time.time() - started
  _, accuracy = dp_model.evaluate(x_test, y_test, verbose=0)
  export_dir = output_dir / "model"
  dp_model.model.export(str(export_dir), verbose=False)
  ledger = dp_model.privacy_ledger
  return {
    "accuracy": float(accuracy),
    "epsilon": dp_model.epsilon(),
    "delta": DEMO_DELTA,
    "noise_multiplier": dp_model.plan.noise_multiplier,
    "noisy_steps": ledger.noisy_steps,
    "train_examples": len(y_train),
    "test_examples": len(y_test),
    "train_seconds": round(seconds, 1),
    "ledger": str(ledger_path),
    "exported_model": str(export_dir),
  }
