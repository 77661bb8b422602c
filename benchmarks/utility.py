"""Accuracy at a fixed epsilon on the embedded MNIST digits: DP-SGD against non-private training.

Both train the tutorial CNN with the same batch size and epochs (the demo's settings), each with
an optimizer that suits it: DP-SGD's clipped, noisy gradients take a large SGD step (the demo's),
on which non-private training diverges, so the baseline uses Adam(1e-3). The DP run's epsilon
comes from its ledger. Prints one JSON line: each seed's accuracies and gap, and the mean gap.

    .venv/bin/python -m benchmarks.utility [--epochs 15] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from dp_tfx import datasets, models  # noqa: E402
from dp_tfx.keras import make_private  # noqa: E402
from dp_tfx.pipelines import demo  # noqa: E402


def _compile(model, optimizer):
  model.compile(
    optimizer=optimizer,
    metrics=["accuracy"],
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )


def _accuracies(epochs: int, seed: int) -> tuple:
  """(DP accuracy, non-private accuracy, epsilon) of one seed's pair of runs."""
  (x_train, y_train), (x_test, y_test) = datasets.load_mnist(datasets.EMBEDDED)
  config = demo.demo_config(epochs, seed=seed)

  keras.utils.set_random_seed(seed)
  dp_model = make_private(models.tutorial_cnn(), config)
  dp_model.compile(**demo.demo_compile_kwargs())
  dp_model.fit(x_train, y_train, verbose=0)
  dp_accuracy = dp_model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]

  keras.utils.set_random_seed(seed)
  plain = models.tutorial_cnn()
  _compile(plain, keras.optimizers.Adam(1e-3))
  plain.fit(x_train, y_train, batch_size=config.batch_size, epochs=epochs, verbose=0)
  plain_accuracy = plain.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
  return dp_accuracy, plain_accuracy, dp_model.epsilon()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=demo.DEMO_EPOCHS)
  parser.add_argument(
    "--seeds",
    type=int,
    nargs="+",
    default=[0, 1, 2, 3, 4],
    help="one DP and one non-private run per seed (initial weights, noise, "
    "sampling); one run's gap moves by about a point",
  )
  args = parser.parse_args(argv)
  config = demo.demo_config(args.epochs)
  runs = [_accuracies(args.epochs, seed) for seed in args.seeds]
  gaps = [100 * (plain - private) for private, plain, _ in runs]
  print(
    json.dumps(
      {
        "dataset": "embedded MNIST (4000 train / 1000 test)",
        "epochs": args.epochs,
        "batch_size": config.batch_size,
        "noise_multiplier": config.noise_multiplier,
        "l2_norm_clip": config.l2_norm_clip,
        "epsilon": round(runs[0][2], 4),
        "delta": config.delta,
        "seeds": args.seeds,
        "dp_accuracy": [round(private, 4) for private, _, _ in runs],
        "non_private_accuracy": [round(plain, 4) for _, plain, _ in runs],
        "gap_points": [round(gap, 2) for gap in gaps],
        "mean_gap_points": round(statistics.mean(gaps), 2),
        "gap_points_std": round(statistics.stdev(gaps), 2) if len(gaps) > 1 else None,
      }
    )
  )


if __name__ == "__main__":
  main()
