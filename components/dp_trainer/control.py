"""The non-private control: a DPTrainer user module trained by a standard TFX Trainer, without DP.

What DP costs in utility is only visible beside the same model trained without it. A module's
`run_fn` (the standard `tfx.components.Trainer` entry point) delegates here:

  def run_fn(fn_args):
    return control.train_non_private_control(fn_args, sys.modules[__name__])

It reads the same examples and builds, compiles and exports the same model as the DPTrainer (the
same module functions, `read_examples` and `export_serving_model`), and trains it with plain Keras
`fit`: no clipping, no noise, no ledger. custom_config holds the module's hyperparameters, as for
the DPTrainer, plus the DP run's length, so that both train equally long:

  epochs       a whole number of passes over the training data (the DPConfig's epochs)
  batch_size   examples per step (the DPConfig's expected batch size)

The Trainer's train_args / eval_args step counts are not used. The eval metrics go to
METRICS_FILE in the model run, as the DPTrainer's do.
"""

from __future__ import annotations

import os
from types import ModuleType

import keras
from tfx.components.trainer.fn_args_utils import FnArgs

from dp_tfx.components.model_io import (
  eval_dataset_read_whole,
  examples_dataset,
  export_serving_model,
  read_examples,
  record_eval_metrics,
)
from dp_tfx.components.user_module import TrainerContext

EPOCHS_KEY = "epochs"
BATCH_SIZE_KEY = "batch_size"


def _whole_number(config: dict, key: str) -> int:
  value = config.get(key)
  whole = (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and float(value).is_integer()
    and value >= 1
  )
  if not whole:
    raise ValueError(
      f"the non-private control needs custom_config[{key!r}], a whole number >= 1 "
      f"(the DP run's {key}, so that both train equally long); got {value!r}"
    )
  return int(value)


def control_custom_config(hyperparameters: dict, epochs, batch_size) -> dict:
  """The control's custom_config for a DP run of `epochs` epochs at expected batch `batch_size`.

  Called when the pipeline is built, so that a run the control cannot match (fractional epochs, a
  run given in steps) is refused before the DPTrainer spends any privacy.
  """
  config = {**hyperparameters, EPOCHS_KEY: epochs, BATCH_SIZE_KEY: batch_size}
  _whole_number(config, EPOCHS_KEY)
  _whole_number(config, BATCH_SIZE_KEY)
  return config


def _trainer_context(fn_args: FnArgs) -> TrainerContext:
  """The context the module's functions get from a standard Trainer, as the DPTrainer builds it:
  custom_config updated by tuned hyperparameters, and the URIs of the schema and transform graph."""
  hyperparameters = dict(fn_args.custom_config or {})
  hyperparameters.update((fn_args.hyperparameters or {}).get("values", {}))
  # FnArgs names the schema file; the DPTrainer's context names the artifact's directory.
  schema_uri = os.path.dirname(fn_args.schema_path) if fn_args.schema_path else None
  return TrainerContext(
    hyperparameters=hyperparameters,
    schema_uri=schema_uri,
    transform_graph_uri=fn_args.transform_graph_path,
  )


def train_non_private_control(fn_args: FnArgs, module: ModuleType) -> keras.callbacks.History:
  """Trains `module`'s model without DP and exports it with the DPTrainer's serving signature.

  Args:
    fn_args: the standard Trainer's FnArgs (train_files, eval_files, serving_model_dir,
      model_run_dir, custom_config with epochs and batch_size).
    module: the DPTrainer user module (feature_spec, decode, build_model, compile_kwargs).

  Returns:
    The Keras History of the fit (a TFX Trainer ignores what run_fn returns).

  Raises:
    ValueError: if custom_config lacks a whole epochs or batch_size, or a split has no files.
  """
  context = _trainer_context(fn_args)
  epochs = _whole_number(context.hyperparameters, EPOCHS_KEY)
  batch_size = _whole_number(context.hyperparameters, BATCH_SIZE_KEY)
  spec = module.feature_spec(context)
  x_train, y_train = read_examples(fn_args.train_files, spec, module.decode, context)
  eval_data = examples_dataset(fn_args.eval_files, spec, module.decode, context, batch_size)
  model = module.build_model(context)
  model.compile(**module.compile_kwargs(context))
  with eval_dataset_read_whole():
    history = model.fit(
      x_train,
      y_train,
      batch_size=batch_size,
      epochs=epochs,
      validation_data=eval_data,
      verbose=2,
      callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir)],
    )
  record_eval_metrics(model, eval_data, fn_args.model_run_dir)
  export_serving_model(model, spec, module.decode, context, fn_args.serving_model_dir)
  return history
