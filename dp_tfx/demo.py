"""The main job until the TFX pipeline lands: DP-SGD on the embedded MNIST digits, with Keras.

Trains the TF Privacy tutorial CNN with per-example clipping and Poisson sampling on the 4,000
embedded training digits, evaluates on the 1,000 held-out ones, and reports epsilon from the
ledger that training wrote. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import pathlib
import time
from typing import Optional

import keras

from dp_tfx import datasets, models
from dp_tfx.config import DPConfig
from dp_tfx.keras import make_private

DEMO_DELTA = 1e-5
DEMO_EPOCHS = 15
OUTPUT_DIR = pathlib.Path("output") / "demo"


def demo_config(epochs: int = DEMO_EPOCHS, seed: Optional[int] = None) -> DPConfig:
  return DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1, batch_size=200, epochs=epochs,
                  delta=DEMO_DELTA, seed=seed)


def run(epochs: Optional[int] = None, output_dir: pathlib.Path = OUTPUT_DIR, verbose=2,
        seed: Optional[int] = None) -> dict:
  """Trains, evaluates and returns the figures: accuracy, epsilon, delta, steps, paths."""
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist(datasets.EMBEDDED)
  output_dir = pathlib.Path(output_dir)
  ledger_path = output_dir / "privacy_ledger.json"
  if ledger_path.exists():
    ledger_path.unlink()  # a fresh demo run; a real job keeps its ledger (every step counts)
  dp_model = make_private(models.tutorial_cnn(), demo_config(epochs or DEMO_EPOCHS, seed),
                          ledger_path=ledger_path)
  dp_model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5, momentum=0.5),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])  # jit_compile "auto": XLA on accelerators only
  started = time.time()
  dp_model.fit(x_train, y_train, validation_data=(x_test, y_test), verbose=verbose)
  seconds = time.time() - started
  _, accuracy = dp_model.evaluate(x_test, y_test, verbose=0)
  export_dir = output_dir / "model"
  dp_model.model.export(str(export_dir), verbose=False)
  ledger = dp_model.privacy_ledger
  return {"accuracy": float(accuracy), "epsilon": dp_model.epsilon(), "delta": DEMO_DELTA,
          "noise_multiplier": dp_model.plan.noise_multiplier, "noisy_steps": ledger.noisy_steps,
          "train_examples": len(y_train), "test_examples": len(y_test),
          "train_seconds": round(seconds, 1), "ledger": str(ledger_path),
          "exported_model": str(export_dir)}
