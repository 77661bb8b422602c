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

import contextlib
import logging
import os
import sys
from typing import Optional, Sequence

from dp_tfx import datasets, json_output, signing
from dp_tfx.config import (
  DPConfig,
)
from dp_tfx.ledger import release_reservation
from dp_tfx.plan import TrainingPlan
from dp_tfx.report import ledger_summary, ledger_with_history
from dp_tfx.pipelines import quiet_output
from dp_tfx.pipelines.cli_arguments import USAGE_ERROR, build_parser
from dp_tfx.pipelines.examples import EXAMPLES


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


# What runs each command of cli_arguments.build_parser().
_HANDLERS = {
  "epsilon": _epsilon,
  "calibrate": _calibrate,
  "report": _report,
  "release-reservation": _release_reservation,
  "new-budget": _new_budget,
  "demo": _demo,
  "pipeline": _pipeline,
}


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
      result = _HANDLERS[args.command](args)
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
