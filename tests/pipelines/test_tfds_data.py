"""`--data tfds` offline: the TFDS loaders, the example data writers and the whole pipeline under
tfds.testing.mock_data (fake examples of the datasets' real features), and the one-line refusal
when the dataset is not cached and its download host cannot be reached.

No test here touches the network: under mock_data TFDS's download is a no-op, and the reachability
probe (datasets._unreachable_host, the only other network access) is either replaced or pointed at
a local port that refuses connections.
"""

import http.server
import json
import pathlib
import socket
import threading

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from dp_tfx import datasets
from dp_tfx.pipelines import cli
from dp_tfx.pipelines import lm_data, lm_model, mnist_data, mnist_model

MNIST_HOST = "storage.googleapis.com"
SHAKESPEARE_HOST = "raw.githubusercontent.com"
# One fake tiny_shakespeare text (its single "train" example holds the whole text): 100 records'
# worth of characters of the example's vocabulary, enough for a train/eval split.
FAKE_PLAY = "".join(
  np.random.default_rng(5).choice(
    list(lm_model.VOCABULARY), size=100 * (lm_model.SEQUENCE_LENGTH + 1)
  )
)


@pytest.fixture
def empty_tfds_cache(tmp_path, monkeypatch):
  """TFDS's default data_dir is an empty folder: nothing here is cached already."""
  cache = tmp_path / "tfds_cache"
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(cache))
  return cache


@pytest.fixture
def probed(monkeypatch):
  """Every download host answers; returns the URLs the probe was asked about."""
  asked = []

  def reachable(urls, timeout=None):
    asked.extend(urls)
    return None

  monkeypatch.setattr(datasets, "_unreachable_host", reachable)
  return asked


@pytest.fixture
def refused_url():
  """An http URL on a local port that refuses connections (bound, never listening)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mnist.gz"


@pytest.fixture
def no_download(monkeypatch):
  """Fails the test if TFDS starts a download."""

  def download_and_prepare(self, *args, **kwargs):
    pytest.fail(f"TFDS started downloading {self.name}")

  monkeypatch.setattr(
    tfds.core.dataset_builder.DatasetBuilder, "download_and_prepare", download_and_prepare
  )


def _fake_play(self, split, decoders=None, read_config=None, **kwargs):
  """tiny_shakespeare's one example, as TFDS's reader would yield it (replaces _as_dataset)."""
  return tf.data.Dataset.from_tensors({"text": tf.constant(FAKE_PLAY)})


def _mock_mnist(num_examples):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _mock_shakespeare():
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=_fake_play)


def _parsed(path, module):
  """The records of a TFRecord file, parsed and decoded as the trainer's module does."""
  spec = module.feature_spec(None)
  return [
    module.decode(tf.io.parse_example(batch, spec), None)
    for batch in tf.data.TFRecordDataset(str(path)).batch(1000)
  ]


# (a) The loaders.


def test_tfds_mnist_is_images_in_0_1_and_int_labels(probed, monkeypatch):
  with _mock_mnist(30):
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(datasets.TFDS)
    monkeypatch.setattr(datasets, "_READ_BATCH", 7)  # 5 batches of a split, put back together
    (x_batched, y_batched), _ = datasets.load_mnist(datasets.TFDS)
  for images, labels in ((x_train, y_train), (x_test, y_test)):
    assert images.shape == (30, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (30,) and labels.dtype == np.int32
    assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.5  # uint8 / 255
    assert np.all(images * 255 == np.round(images * 255).astype(np.float32))
    assert 0 <= labels.min() and labels.max() < 10
  np.testing.assert_array_equal(x_batched, x_train)
  np.testing.assert_array_equal(y_batched, y_train)
  assert probed and {url.split("/")[2] for url in probed} == {MNIST_HOST}


def test_tfds_shakespeare_is_the_text_of_the_one_train_example(probed):
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):  # a random short text
    text = datasets.load_shakespeare(datasets.TFDS)
  assert isinstance(text, str) and 10 <= len(text) < 20
  with _mock_shakespeare():
    assert datasets.load_shakespeare(datasets.TFDS) == FAKE_PLAY
  assert {url.split("/")[2] for url in probed} == {SHAKESPEARE_HOST}


# (b) The example data writers.


def test_mnist_writer_with_tfds_writes_what_the_trainer_reads(tmp_path, probed):
  with _mock_mnist(30):
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(datasets.TFDS)
    root = pathlib.Path(
      mnist_data.write_mnist_tfrecords(tmp_path / "data", datasets.TFDS, limit=20)
    )
  assert (root / "_COMPLETE_tfds_20").exists()
  for name, images, labels in (
    (mnist_data.TRAIN_DIR, x_train, y_train),
    (mnist_data.EVAL_DIR, x_test, y_test),
  ):
    ((read_images, read_labels),) = _parsed(root / name / "data.tfrecord", mnist_model)
    np.testing.assert_array_equal(read_images.numpy(), images[:20])
    np.testing.assert_array_equal(read_labels.numpy(), labels[:20])


def test_lm_writer_with_tfds_cuts_the_tiny_shakespeare_text_into_records(tmp_path, probed):
  with _mock_shakespeare():
    summary = lm_data.write_lm_tfrecords(
      tmp_path / "data", datasets.TFDS, limit=20, repetitions=(1, 2)
    )
  assert summary["source"] == datasets.TFDS and summary["characters"] == len(FAKE_PLAY)
  assert (summary["train_sequences"], summary["eval_sequences"]) == (20, 3)
  width = lm_model.SEQUENCE_LENGTH + 1
  windows = {tuple(window) for window in lm_model.encode(FAKE_PLAY).reshape(-1, width)}

  def records(path):
    ((features, targets),) = _parsed(path, lm_model)
    chars = np.concatenate([features[lm_model.TOKENS_KEY].numpy(), targets.numpy()[:, -1:]], axis=1)
    return [tuple(record) for record in chars]

  train, held_out = records(summary["train_file"]), records(summary["eval_file"])
  assert len(train) == 20 + summary["canary_sequences"] and summary["canary_sequences"] == 6
  assert sum(record in windows for record in train) == 20  # the rest are canary copies
  assert len(held_out) == 3 and all(record in windows for record in held_out)
  assert not set(held_out) & set(train)


# (c) The whole pipeline.


@pytest.mark.slow
def test_cli_pipeline_with_tfds_data_runs_end_to_end(tmp_path, capsys, probed):
  with _mock_mnist(200):  # train and test are the same 200 fake digits
    assert (
      cli.main(
        [
          "pipeline",
          "--data",
          "tfds",
          "--output-dir",
          str(tmp_path),
          "--data-limit",
          "200",
          "--batch-size",
          "50",
          "--epochs",
          "1",
          "--max-epsilon",
          "8",
          "--json",
        ]
      )
      == 0
    )
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["pushed"] and result["verdict"].startswith("PUSHED"), result["verdict"]
  assert (tmp_path / "data" / "_COMPLETE_tfds_200").exists()
  report = json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
  assert report["ledger"]["facts"]["dataset_size"] == 200
  assert report["ledger"]["noisy_steps"] == 4  # 200 digits, batch 50, 1 epoch
  assert 0 <= result["accuracy"] <= 1
  assert {url.split("/")[2] for url in probed} == {MNIST_HOST}


@pytest.mark.slow
def test_cli_lm_pipeline_with_tfds_data_runs_end_to_end(tmp_path, capsys, probed):
  with _mock_shakespeare():  # 60 of the fake text's 90 training records, batch 30: 2 steps
    assert (
      cli.main(
        [
          "pipeline",
          "--example",
          "lm",
          "--data",
          "tfds",
          "--no-audit",
          "--output-dir",
          str(tmp_path),
          "--data-limit",
          "60",
          "--batch-size",
          "30",
          "--epochs",
          "1",
          "--max-epsilon",
          "50",
          "--json",
        ]
      )
      == 0
    )
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["example"] == "lm" and result["pushed"], result["verdict"]
  written = json.loads((tmp_path / "data" / "_COMPLETE.json").read_text())["summary"]
  assert written["source"] == datasets.TFDS and written["characters"] == len(FAKE_PLAY)
  report = json.loads((pathlib.Path(result["report_dir"]) / "report.json").read_text())
  assert report["ledger"]["facts"]["dataset_size"] == 60 + written["canary_sequences"]
  assert {url.split("/")[2] for url in probed} == {SHAKESPEARE_HOST}


# (d) Offline: one line, exit 2, nothing trained or written.


@pytest.mark.parametrize("example, dataset", [("mnist", "mnist"), ("lm", "tiny_shakespeare")])
def test_cli_offline_says_so_in_one_line_before_anything_runs(
  tmp_path, capsys, monkeypatch, empty_tfds_cache, refused_url, no_download, example, dataset
):
  monkeypatch.setattr(datasets, "_download_urls", lambda builder: [refused_url])
  output = tmp_path / "output"
  assert (
    cli.main(
      [
        "pipeline",
        "--example",
        example,
        "--data",
        "tfds",
        "--epochs",
        "1",
        "--output-dir",
        str(output),
      ]
    )
    == cli.USAGE_ERROR
  )
  captured = capsys.readouterr()
  host = refused_url.split("/")[2]
  cache = empty_tfds_cache / dataset
  assert captured.out == ""
  (line,) = captured.err.splitlines()
  assert line.startswith(
    f"dp-tfx pipeline: error: could not download the TFDS dataset "
    f"{dataset!r} ({host} is unreachable: no network?); once downloaded, "
    f"TFDS keeps it in {cache}/"
  )
  assert line.endswith("; --data embedded works offline")
  _assert_nothing_written(output)
  assert not empty_tfds_cache.exists()


def _assert_nothing_written(output):
  """No data, no MLMD store, no ledger record: nothing trained or spent (the output dir and its
  empty ledger history exist: they were checked to be writable before anything else)."""
  written = [p for p in output.rglob("*") if not p.is_dir()] if output.exists() else []
  assert written == []


@pytest.mark.parametrize(
  "raised, reason",
  [
    (
      requests.exceptions.ConnectionError(
        f"HTTPSConnectionPool(host='{MNIST_HOST}', port=443): Max retries exceeded"
      ),
      "the connection failed: no network?",
    ),
    (
      tfds.download.DownloadError("Failed to get url https://example.org/x. HTTP code: 404."),
      "HTTP code: 404",
    ),
  ],
  ids=["connection", "http-status"],
)
def test_a_download_that_fails_after_the_probe_is_the_same_one_line(
  tmp_path, capsys, monkeypatch, empty_tfds_cache, probed, raised, reason
):
  def download_and_prepare(self, *args, **kwargs):
    raise raised

  monkeypatch.setattr(
    tfds.core.dataset_builder.DatasetBuilder, "download_and_prepare", download_and_prepare
  )
  output = tmp_path / "output"
  assert (
    cli.main(["pipeline", "--data", "tfds", "--epochs", "1", "--output-dir", str(output)])
    == cli.USAGE_ERROR
  )
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("dp-tfx pipeline: error: could not download the TFDS dataset 'mnist' (")
  assert reason in line and line.endswith("; --data embedded works offline")
  _assert_nothing_written(output)


def test_other_failures_of_the_download_still_raise(monkeypatch, empty_tfds_cache, probed):
  def download_and_prepare(self, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(
    tfds.core.dataset_builder.DatasetBuilder, "download_and_prepare", download_and_prepare
  )
  with pytest.raises(OSError, match="No space left") as raised:
    datasets.load_mnist(datasets.TFDS)
  assert not isinstance(raised.value, datasets.DatasetDownloadError)


def test_a_cached_dataset_is_neither_probed_nor_downloaded(monkeypatch, tmp_path):
  class CachedBuilder:
    data_path = tmp_path
    name = "mnist"

    def is_prepared(self):
      return True

  builder = CachedBuilder()
  monkeypatch.setattr(tfds, "builder", lambda name: builder)
  monkeypatch.setattr(
    datasets, "_unreachable_host", lambda urls, timeout=None: pytest.fail("probed a cached dataset")
  )
  assert datasets._prepared_tfds_builder("mnist") is builder


def test_the_probe_counts_any_answer_as_reachable_and_asks_each_host_once(refused_url):
  heads = []

  class NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
      heads.append(self.path)
      self.send_response(404)
      self.end_headers()

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    answering = f"http://127.0.0.1:{server.server_port}"
    assert datasets._unreachable_host([f"{answering}/a.gz", f"{answering}/b.gz"]) is None
    assert heads == ["/a.gz"]
    assert (
      datasets._unreachable_host([f"{answering}/a.gz", refused_url], timeout=5)
      == refused_url.split("/")[2]
    )
  finally:
    server.shutdown()
    server.server_close()
