"""`dp-tfx`: epsilon, sigma calibration and ledger reports from the command line.

    dp-tfx epsilon --n 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    dp-tfx calibrate --n 60000 --batch-size 256 --epochs 60 --delta 1e-5 --target-epsilon 3
    dp-tfx report path/to/privacy_ledger.json --delta 1e-5
    dp-tfx demo

Bad arguments exit with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

from dp_tfx import accounting
from dp_tfx.ledger import PrivacyLedger

USAGE_ERROR = 2


class _ArgumentParser(argparse.ArgumentParser):
  """Reports a bad argument as one line (not the usage block) and exits 2."""

  def error(self, message):
    self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
  return value


def _number(minimum: float, maximum: float = math.inf, open_low: bool = False):
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    low_ok = value > minimum if open_low else value >= minimum
    if not (low_ok and value < maximum and math.isfinite(value)):
      low = "(" if open_low else "["
      raise argparse.ArgumentTypeError(f"expected a number in {low}{minimum}, {maximum}), got {text!r}")
    return value
  return parse


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--n", type=_positive_int, required=True, help="dataset size N")
  parser.add_argument("--batch-size", type=_positive_int, required=True,
                      help="expected batch size B (sampling rate q = B/N)")
  steps = parser.add_mutually_exclusive_group(required=True)
  steps.add_argument("--epochs", type=_number(0, open_low=True),
                     help="epochs; steps = floor(epochs * N / B)")
  steps.add_argument("--steps", type=_positive_int, help="noisy steps")
  parser.add_argument("--delta", type=_number(0, 1, open_low=True), required=True)
  parser.add_argument("--microbatch-size", type=_positive_int, default=1,
                      help="examples per microbatch; > 1 doubles the sensitivity (2C)")
  parser.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=accounting.PLD)
  parser.add_argument("--json", action="store_true", help="print one JSON object")


def _facts(args) -> dict:
  if args.batch_size > args.n:
    raise ValueError(f"--batch-size {args.batch_size} exceeds --n {args.n}")
  steps = args.steps or accounting.steps_for_epochs(args.epochs, args.n, args.batch_size)
  microbatches = None if args.microbatch_size == 1 else max(1, args.batch_size // args.microbatch_size)
  return {"n": args.n, "batch_size": args.batch_size, "sampling_rate": args.batch_size / args.n,
          "steps": steps, "epochs": steps * args.batch_size / args.n, "delta": args.delta,
          "microbatch_size": args.microbatch_size, "num_microbatches": microbatches,
          "accountant": args.accountant}


def _epsilon(args) -> dict:
  facts = _facts(args)
  facts["noise_multiplier"] = args.noise_multiplier
  facts["epsilon"] = accounting.compute_epsilon(
      sampling_rate=facts["sampling_rate"], noise_multiplier=args.noise_multiplier,
      steps=facts["steps"], delta=args.delta, num_microbatches=facts["num_microbatches"],
      accountant=args.accountant)
  return facts


def _calibrate(args) -> dict:
  facts = _facts(args)
  facts["target_epsilon"] = args.target_epsilon
  sigma = accounting.calibrate_noise_multiplier(
      target_epsilon=args.target_epsilon, delta=args.delta, sampling_rate=facts["sampling_rate"],
      steps=facts["steps"], num_microbatches=facts["num_microbatches"], accountant=args.accountant)
  facts["noise_multiplier"] = sigma
  facts["epsilon"] = accounting.compute_epsilon(
      sampling_rate=facts["sampling_rate"], noise_multiplier=sigma, steps=facts["steps"],
      delta=args.delta, num_microbatches=facts["num_microbatches"], accountant=args.accountant)
  return facts


def _report(args) -> dict:
  ledger = PrivacyLedger.load(args.ledger)
  delta = args.delta if args.delta is not None else 1.0 / ledger.dataset_size
  return {"ledger": str(args.ledger), "dataset_size": ledger.dataset_size,
          "privacy_unit": ledger.privacy_unit, "noisy_steps": ledger.noisy_steps,
          "segments": len(ledger.segments), "rigorous": ledger.rigorous, "delta": delta,
          "accountant": args.accountant, "epsilon": ledger.epsilon(delta, args.accountant),
          "content_hash": ledger.content_hash()}


def _demo(args) -> dict:
  from dp_tfx import demo  # TensorFlow loads only for commands that train

  return demo.run(epochs=args.epochs, verbose=0 if args.json else 2)


def _print(result: dict, as_json: bool) -> None:
  if as_json:
    print(json.dumps(result, sort_keys=True, default=str))
    return
  for key in sorted(result):
    print(f"{key:>18}: {result[key]}")


def build_parser() -> argparse.ArgumentParser:
  parser = _ArgumentParser(prog="dp-tfx", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

  epsilon = commands.add_parser("epsilon", help="epsilon(delta) of DP-SGD hyperparameters")
  _add_training_arguments(epsilon)
  epsilon.add_argument("--noise-multiplier", type=_number(0), required=True,
                       help="sigma = noise std / clip norm")
  epsilon.set_defaults(handler=_epsilon)

  calibrate = commands.add_parser("calibrate", help="the smallest sigma for a target epsilon")
  _add_training_arguments(calibrate)
  calibrate.add_argument("--target-epsilon", type=_number(0, open_low=True), required=True)
  calibrate.set_defaults(handler=_calibrate)

  report = commands.add_parser("report", help="verify a privacy ledger and print its epsilon")
  report.add_argument("ledger", help="path to privacy_ledger.json")
  report.add_argument("--delta", type=_number(0, 1, open_low=True),
                      help="default: 1/N of the ledger's dataset")
  report.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=accounting.PLD)
  report.add_argument("--json", action="store_true")
  report.set_defaults(handler=_report)

  demo = commands.add_parser("demo", help="train the tutorial CNN with DP-SGD on embedded MNIST")
  demo.add_argument("--epochs", type=_positive_int, default=None)
  demo.add_argument("--json", action="store_true")
  demo.set_defaults(handler=_demo)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    result = args.handler(args)
  except ValueError as error:  # LedgerError included: a readable reason, not a traceback
    print(f"dp-tfx {args.command}: error: {error}", file=sys.stderr)
    return USAGE_ERROR
  _print(result, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
