"""Accuracy at a fixed epsilon on the embedded MNIST digits: DP-SGD against non-private training.

Both train the tutorial CNN with the same batch size and epochs (the demo's settings), each with
an optimizer that suits it: DP-SGD's clipped, noisy gradients take a large SGD step (the demo's),
on which non-private training diverges, so the baseline uses Adam(1e-3). The DP run's epsilon
comes from its ledger. Prints one JSON line.

    .venv/bin/python -m benchmarks.utility [--epochs 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from dp_tfx import datasets, demo, models  # noqa: E402
from dp_tfx.keras import make_private  # noqa: E402


def _compile(model, optimizer):
  model.compile(optimizer=optimizer, metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=demo.DEMO_EPOCHS)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist(datasets.EMBEDDED)
  config = demo.demo_config(args.epochs, seed=args.seed)

  keras.utils.set_random_seed(args.seed)
  dp_model = make_private(models.tutorial_cnn(), config)
  _compile(dp_model, keras.optimizers.SGD(learning_rate=0.5, momentum=0.5))
  dp_model.fit(x_train, y_train, verbose=0)
  dp_accuracy = dp_model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]

  keras.utils.set_random_seed(args.seed)
  plain = models.tutorial_cnn()
  _compile(plain, keras.optimizers.Adam(1e-3))
  plain.fit(x_train, y_train, batch_size=config.batch_size, epochs=args.epochs, verbose=0)
  plain_accuracy = plain.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]

  print(json.dumps({
      "dataset": "embedded MNIST (4000 train / 1000 test)", "epochs": args.epochs,
      "batch_size": config.batch_size, "noise_multiplier": config.noise_multiplier,
      "l2_norm_clip": config.l2_norm_clip, "epsilon": round(dp_model.epsilon(), 4),
      "delta": config.delta, "dp_accuracy": round(dp_accuracy, 4),
      "non_private_accuracy": round(plain_accuracy, 4),
      "gap_points": round(100 * (plain_accuracy - dp_accuracy), 2)}))


if __name__ == "__main__":
  main()
