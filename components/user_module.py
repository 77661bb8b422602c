"""The user module of dp_tfx's components: its contract, the context its functions get, and a
check of it when the pipeline is built.

A module (module_file or module_path, the TFX way) provides:

  feature_spec(context) -> dict     tf.io.parse_example spec of the stored tf.Examples
  decode(parsed, context) -> (inputs, labels)   parsed feature batch -> model inputs and labels
  build_model(context) -> keras.Model           an uncompiled model
  compile_kwargs(context) -> dict               optimizer, loss and metrics for compile()
  privacy_unit(context) -> str                  optional: what one example stands for in the
                                                ledger (default "example"; "sequence" for LMs)

`context` is a `TrainerContext`: hyperparameters (custom_config, updated by a HyperParameters
artifact), and the URIs of the optional schema and transform graph. The DPTrainer, the
PrivacyAuditor and the non-private control all build it here, so they all see the same.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
from typing import Any, Dict, Optional

from tfx.types import artifact_utils
from tfx.utils import io_utils, json_utils

from dp_tfx.components import specs

MODULE_FUNCTIONS = ("feature_spec", "decode", "build_model", "compile_kwargs")
PRIVACY_UNIT_FUNCTION = "privacy_unit"


@dataclasses.dataclass(frozen=True)
class TrainerContext:
  """What the user module's functions receive (like TFX's FnArgs)."""

  hyperparameters: Dict[str, Any]
  schema_uri: Optional[str] = None
  transform_graph_uri: Optional[str] = None


def trainer_context(input_dict, exec_properties) -> TrainerContext:
  """The context the user module's functions get: custom_config updated by tuned hyperparameters,
  and the URIs of the schema and transform graph (every component that runs the module builds it
  here, so they all see the same)."""
  hyperparameters = json_utils.loads(exec_properties.get(specs.CUSTOM_CONFIG_KEY) or "{}") or {}
  tuned = input_dict.get(specs.HYPERPARAMETERS_KEY)
  if tuned:  # the Tuner writes one file, as TFX's Trainer reads it
    path = io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(tuned))
    hyperparameters.update(json.loads(io_utils.read_string_file(path)).get("values", {}))
  uri = lambda key: artifact_utils.get_single_uri(input_dict[key]) if input_dict.get(key) else None
  return TrainerContext(
    hyperparameters=hyperparameters,
    schema_uri=uri(specs.SCHEMA_KEY),
    transform_graph_uri=uri(specs.TRANSFORM_GRAPH_KEY),
  )


def _top_level_names(source: str) -> set:
  """Names a module binds at its top level: functions, classes, assignments and imports."""
  names = set()
  for node in ast.parse(source).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
  return names


def check_module_functions(module_file: Optional[str], module_path: Optional[str]) -> None:
  """Refuses, when the pipeline is built, a user module that lacks a function the DPTrainer calls.

  Otherwise TFX's bare AttributeError comes only when the DPTrainer runs, after every upstream
  component. The module is read, not imported (no user code runs at build time); a module this
  process cannot find (e.g. one only in the container image) is checked when it runs.

  Raises:
    ValueError: naming the missing functions and the required ones.
  """
  path = module_file
  if module_path:
    try:
      spec = importlib.util.find_spec(module_path)
    except (ImportError, ValueError):
      spec = None
    path = spec.origin if spec is not None and spec.has_location else None
  if not path or not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as handle:
    try:
      defined = _top_level_names(handle.read())
    except SyntaxError as error:
      raise ValueError(f"the DPTrainer's module {path} does not parse: {error}") from None
  missing = [name for name in MODULE_FUNCTIONS if name not in defined]
  if missing:
    raise ValueError(
      f"the DPTrainer's module {module_file or module_path} lacks "
      f"{', '.join(missing)}; required: {', '.join(MODULE_FUNCTIONS)} "
      "(see the README's 'Add DP training to your own TFX pipeline')"
    )
