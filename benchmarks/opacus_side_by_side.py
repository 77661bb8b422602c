r"""Opacus's DP-SGD step time against the plain PyTorch step, on step_overhead.py's models.

The PyTorch counterpart of benchmarks/step_overhead.py, so that dp_tfx's figures can be set beside
those of Opacus, PyTorch's DP-SGD library, for the same models, data and batch sizes. Prints one
JSON line per (model, batch size, grad-sample mode): the time per step of a plain PyTorch SGD step
and of an Opacus step (make_private: Poisson sampling of mean batch size, noise multiplier 1.0,
clip norm 1.0, secure_mode off as by default), and their ratio. As in step_overhead, each mode gets
a warm-up epoch, then the modes' epochs alternate for `--rounds` rounds of `--repeats` epochs, and
the fastest epoch of each counts. A grad-sample mode that fails on a model gets an "errors" entry.

It needs torch and Opacus, which are not the project's dependencies, so it runs from its own
virtual environment outside the project. The torch wheel named here is the CPU-only build that
this machine's pip finds in its local wheel folder (no nvidia-* packages); where that folder is
missing, PyPI's `torch==2.13.0` is the same release with its CUDA packages (Opacus 1.6 needs torch
2.6 or later):

    python3.11 -m venv /work/opacus_venv
    /work/opacus_venv/bin/pip install 'opacus==1.6.0' 'torch==2.13.0+cpu'
    /work/opacus_venv/bin/python benchmarks/opacus_side_by_side.py --models char_lstm \
        --batch-sizes 128 512

The models mirror step_overhead's: char_lstm uses Opacus's DPLSTM (Opacus has no per-sample
gradients for nn.LSTM) for the DP step and torch's fused nn.LSTM for the plain one; the plain step
with DPLSTM is reported as well. The cnn takes NCHW images, PyTorch's layout.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import opacus
import torch
from opacus.layers import DPLSTM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

VOCAB, SEQUENCE = 5000, 64
CHARACTERS, CHARACTER_SEQUENCE = 64, 32


class CharacterLSTM(nn.Module):
  """Embedding(64, 32), an LSTM of 64 units whose last output feeds Dense(64)."""

  def __init__(self, lstm=DPLSTM):
    super().__init__()
    self.embedding = nn.Embedding(CHARACTERS, 32)
    self.lstm = lstm(32, 64, batch_first=True)
    self.dense = nn.Linear(64, CHARACTERS)

  def forward(self, characters):
    outputs, _ = self.lstm(self.embedding(characters))
    return self.dense(outputs[:, -1])


class TextClassifier(nn.Module):
  """Embedding(5000, 32), averaged over the 64 positions, then Dense(32, relu) and Dense(2)."""

  def __init__(self):
    super().__init__()
    self.embedding = nn.Embedding(VOCAB, 32)
    self.hidden = nn.Linear(32, 32)
    self.logits = nn.Linear(32, 2)

  def forward(self, tokens):
    return self.logits(torch.relu(self.hidden(self.embedding(tokens).mean(dim=1))))


def tutorial_cnn(num_classes: int = 10) -> nn.Module:
  """dp_tfx.models.tutorial_cnn (26,010 parameters); padding 3 is Keras's "same" at stride 2."""
  return nn.Sequential(
    nn.Conv2d(1, 16, 8, stride=2, padding=3),
    nn.ReLU(),
    nn.MaxPool2d(2, 1),
    nn.Conv2d(16, 32, 4, stride=2),
    nn.ReLU(),
    nn.MaxPool2d(2, 1),
    nn.Flatten(),
    nn.Linear(32 * 4 * 4, 32),
    nn.ReLU(),
    nn.Linear(32, num_classes),
  )


MODELS = {"cnn": tutorial_cnn, "text": TextClassifier, "char_lstm": CharacterLSTM}


def _data(model_name, size, rng):
  """step_overhead's arrays, drawn the same way, as the tensors PyTorch's layers take."""
  if model_name == "cnn":
    x = rng.random((size, 28, 28, 1), dtype=np.float32).transpose(0, 3, 1, 2)
    y = rng.integers(0, 10, size)
  elif model_name == "char_lstm":
    x = rng.integers(0, CHARACTERS, (size, CHARACTER_SEQUENCE))
    y = rng.integers(0, CHARACTERS, size)
  else:
    x = rng.integers(0, VOCAB, (size, SEQUENCE))
    y = rng.integers(0, 2, size)
  return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


class _BatchTensors(TensorDataset):
  """Gathers a batch with one indexing op per tensor; the DataLoader's default per-example fetch
  and stack costs up to 5 ms a batch here, which Keras's array slicing does not pay."""

  def __getitems__(self, indices):
    index = torch.as_tensor(indices, dtype=torch.long)
    return tuple(tensor[index] for tensor in self.tensors)


def _as_batch(batch):
  return batch


def _epoch(model, optimizer, loader):
  """Seconds per step over one epoch: forward, backward and optimizer step, batches included."""
  loss = nn.CrossEntropyLoss()
  steps, started = 0, time.perf_counter()
  for inputs, labels in loader:
    optimizer.zero_grad(set_to_none=True)
    loss(model(inputs), labels).backward()
    optimizer.step()
    steps += 1
  return (time.perf_counter() - started) / steps


def _error(error: BaseException) -> str:
  return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"


def _runs(model_name, batch_size, steps, dp_modes):
  """(model, optimizer, loader) per mode, each with a fresh model from the same seed, and the
  error of each DP mode that Opacus refused."""
  dataset = _BatchTensors(*_data(model_name, batch_size * steps, np.random.default_rng(0)))

  def fresh(build=MODELS[model_name]):
    torch.manual_seed(0)
    model = build()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_as_batch)
    return model, torch.optim.SGD(model.parameters(), lr=0.01), loader

  runs, errors = {}, {}
  if model_name == "char_lstm":
    runs["plain"] = fresh(lambda: CharacterLSTM(nn.LSTM))
    runs["plain_dplstm"] = fresh()
  else:
    runs["plain"] = fresh()
  for mode in dp_modes:
    model, optimizer, loader = fresh()
    try:
      runs[mode] = opacus.PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
        grad_sample_mode=mode,
      )
    except Exception as error:  # a mode that does not support a layer: record it, go on
      errors[mode] = _error(error)
  return runs, errors


def measure(model_name, batch_size, steps, rounds, repeats, dp_modes):
  """The fastest epoch's seconds per step per mode, and the errors of the DP modes that failed.

  After one warm-up epoch each, the modes take turns: `rounds` rounds of `repeats` epochs each,
  so a change in the machine's load hits all of them alike.
  """
  runs, errors = _runs(model_name, batch_size, steps, dp_modes)
  seconds = {}
  for mode, run in list(runs.items()):
    try:
      _epoch(*run)
      seconds[mode] = []
    except Exception as error:
      errors[mode] = _error(error)
      del runs[mode]
  for _ in range(rounds):
    for mode, run in runs.items():
      seconds[mode] += [_epoch(*run) for _ in range(repeats)]
  return {mode: min(spans) for mode, spans in seconds.items()}, errors


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn"])
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
  parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch (mean for DP)")
  parser.add_argument(
    "--rounds", type=int, default=3, help="rounds in which plain and DP epochs alternate"
  )
  parser.add_argument("--repeats", type=int, default=2, help="timed epochs per mode and round")
  parser.add_argument(
    "--grad-sample-mode",
    nargs="+",
    choices=("hooks", "ew"),
    default=["hooks"],
    help='Opacus per-sample gradients: "hooks" (its '
    'default) and/or "ew" (torch\'s expanded weights)',
  )
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  # Opacus's hooks on a first layer whose input needs no gradient: expected, and said every run.
  warnings.filterwarnings("ignore", message="Full backward hook is firing")
  for model_name in args.models:
    for batch_size in args.batch_sizes:
      seconds, errors = measure(
        model_name, batch_size, args.steps, args.rounds, args.repeats, args.grad_sample_mode
      )
      plain = seconds.get("plain")
      for mode in args.grad_sample_mode:
        result = {
          "library": "opacus",
          "opacus": opacus.__version__,
          "torch": torch.__version__,
          "model": model_name,
          "batch_size": batch_size,
          "grad_sample_mode": mode,
          "steps": args.steps,
          "rounds": args.rounds,
          "repeats": args.repeats,
          "threads": args.threads,
        }
        if plain is not None:
          result["plain_step_ms"] = round(plain * 1e3, 2)
        if mode in seconds and plain is not None:
          result.update(
            dp_step_ms=round(seconds[mode] * 1e3, 2), ratio=round(seconds[mode] / plain, 2)
          )
        if "plain_dplstm" in seconds and mode in seconds:
          dplstm = seconds["plain_dplstm"]
          result.update(
            plain_dplstm_step_ms=round(dplstm * 1e3, 2),
            ratio_to_plain_dplstm=round(seconds[mode] / dplstm, 2),
          )
        for failed in ("plain", "plain_dplstm", mode):
          if failed in errors:
            result.setdefault("errors", {})[failed] = errors[failed]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
