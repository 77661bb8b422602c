"""A Kubeflow pipeline whose roots are not on this machine's disk: --pipeline-root and
--data-root on a tf.io.gfile filesystem (TensorFlow's in-memory ram://, standing in for gs://)."""

import json
import pathlib

import pytest
import tensorflow as tf

from dp_tfx.pipelines import cli


@pytest.mark.parametrize("example, extra", [("mnist", ["--poisson-batches"]), ("lm", [])])
def test_kubeflow_pipeline_on_remote_roots_names_no_local_path(tmp_path, capsys, example, extra):
  root, data = f"ram://dp-{example}/pipeline_root", f"ram://dp-{example}/data"
  assert (
    cli.main(
      [
        "pipeline",
        "--runner",
        "kubeflow",
        "--example",
        example,
        "--output-dir",
        str(tmp_path),
        "--pipeline-root",
        root,
        "--data-root",
        data,
        "--ledger-history",
        "gs://dp-tfx-test/privacy_ledgers",
        "--data-limit",
        "40",
        "--json",
        *extra,
      ]
    )
    == 0
  )
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (result["pipeline_root"], result["data_root"]) == (root, data)
  # The data went to the remote root, through tf.io.gfile.
  for split in ("train", "eval"):
    assert tf.io.gfile.glob(f"{data}/{split}/*.tfrecord")
  if example == "lm":
    assert tf.io.gfile.exists(f"{data}/canaries.json")
    assert f"{data}/canaries.json" in pathlib.Path(result["pipeline_file"]).read_text()
  document = pathlib.Path(result["pipeline_file"]).read_text()
  # Every path the containers use is remote: the roots, the push destination, the canaries.
  assert f'"{root}"' in document and f"{root}/serving_model" in document
  assert str(tmp_path) not in document
  assert "gs://dp-tfx-test/privacy_ledgers" in document
