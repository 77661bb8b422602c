"""The README's "Add DP training to your own TFX pipeline": its user module and pipeline, run as
written on a small CSV (CsvExampleGen -> DPTrainer -> PrivacyEvaluator -> Pusher)."""

import pathlib
import re

import numpy as np
import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Add DP training to your own TFX pipeline"


def _readme_blocks():
  """The section's Python blocks: the user module, then the pipeline."""
  text = README.read_text()
  section = text[text.index(SECTION) :]
  section = section[: section.index("\n## ", len(SECTION))]
  return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _write_csv(directory: pathlib.Path, rows: int = 2000) -> None:
  """A learnable tabular task: the label says whether f0 + f1 > 0. About 1,330 rows go to the
  train split, where the README's DPConfig spends epsilon 2.3 (its policy allows 3)."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(rows, 4)).round(4)
  labels = (features[:, 0] + features[:, 1] > 0).astype(int)
  directory.mkdir(parents=True)
  lines = ["f0,f1,f2,f3,label"] + [
    ",".join(map(str, [*row, label])) for row, label in zip(features, labels)
  ]
  (directory / "data.csv").write_text("\n".join(lines) + "\n")


def test_the_readme_snippet_is_two_blocks_importing_the_public_names():
  module, pipeline = _readme_blocks()
  assert module.startswith("# my_module.py")
  assert "from dp_tfx.components import DPTrainer, PrivacyEvaluator, Pusher" in pipeline


@pytest.mark.slow
def test_the_readme_pipeline_runs_as_written_and_pushes_within_policy(tmp_path, monkeypatch, capfd):
  module, pipeline = _readme_blocks()
  _write_csv(tmp_path / "csv")
  (tmp_path / "my_module.py").write_text(module)
  monkeypatch.chdir(tmp_path)  # module_file="my_module.py", as the README has it
  names = dict(
    DATA_ROOT=str(tmp_path / "csv"),
    LEDGER_HISTORY=str(tmp_path / "budget"),
    SERVING_DIR=str(tmp_path / "serving"),
    PIPELINE_ROOT=str(tmp_path / "root"),
    METADATA_PATH=str(tmp_path / "metadata.sqlite"),
  )
  exec(compile(pipeline, "README.md", "exec"), dict(names))  # pylint: disable=exec-used

  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = names["METADATA_PATH"]
  store = metadata_store.MetadataStore(config)
  (blessing,) = [a for a in store.get_artifacts_by_type("ModelBlessing")]
  assert blessing.custom_properties["blessed"].int_value == 1
  assert 0 < blessing.custom_properties["epsilon"].double_value <= 3.0
  (pushed,) = store.get_artifacts_by_type("PushedModel")
  assert pushed.custom_properties["pushed"].int_value == 1
  assert list(pathlib.Path(names["SERVING_DIR"]).glob("*/saved_model.pb"))
  assert list(pathlib.Path(names["LEDGER_HISTORY"]).glob("segment-*.json"))
  # The Pusher's one line, as the main command's verdict.
  (line,) = [line for line in capfd.readouterr().out.splitlines() if line.startswith("Pusher:")]
  assert line.startswith(f"Pusher: PUSHED to {names['SERVING_DIR']}/") and "within policy" in line
