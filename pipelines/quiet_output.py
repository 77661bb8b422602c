"""Keeps the known-harmless lines of TensorFlow, CUDA's stubs and MLMD off the terminal.

A run of `dp-tfx pipeline` should show its progress and its verdict. TensorFlow 2.21 writes its
start-up lines (oneDNN on, no CUDA driver) through absl's C++ logging before absl::InitializeLog,
straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says; MLMD's Python client warns
that its ZetaSQL queries fall back, once per query. No logging setting reaches them all, so the
filter works on the descriptor: fd 2 becomes a pipe, and a thread forwards every line that is not
a known-harmless one to the real stderr. Child processes (Beam workers) inherit the pipe, so their
lines are filtered too. `--verbose` runs without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

HARMLESS_LINES = tuple(
  re.compile(pattern)
  for pattern in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I0000 .*port\.cc:\d+\] oneDNN custom operations are on\.",
    r"I0000 .*cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"E0000 .*cuda_platform\.cc:\d+\] failed call to cuInit: ",
    # The kernel probe (dp_tfx.kernels) asking Eigen for a grouped convolution it does not have.
    r"W0000 .*local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: "
    r"INVALID_ARGUMENT: filter_size does not have enough elements",
    r"WARNING:absl:ArtifactQuery\.property_predicate is not supported\.",
    r"WARNING:absl:Fallback to non-ZetaSQL contexts execution query due to: filter_query is not "
    r"supported",
  )
)


def is_harmless(line: str) -> bool:
  """Whether `line` (without its newline) is one of the known-harmless lines."""
  return any(pattern.match(line) for pattern in HARMLESS_LINES)


def _forward(source: int, target: int) -> None:
  """Copies lines from `source` to `target` until end of file, leaving out harmless ones."""
  pending = b""
  while True:
    chunk = os.read(source, 65536)
    if not chunk:
      break
    *lines, pending = (pending + chunk).split(b"\n")
    for line in lines:
      if not is_harmless(line.decode("utf-8", "replace")):
        os.write(target, line + b"\n")
  if pending and not is_harmless(pending.decode("utf-8", "replace")):
    os.write(target, pending)
  os.close(source)


@contextlib.contextmanager
def harmless_lines_filtered() -> Iterator[None]:
  """Inside: whatever this process and its children write to fd 2 reaches the real stderr
  without the known-harmless lines, in order."""
  sys.stderr.flush()
  real_stderr = os.dup(2)
  source, sink = os.pipe()
  os.dup2(sink, 2)
  os.close(sink)
  forwarder = threading.Thread(target=_forward, args=(source, real_stderr), daemon=True)
  forwarder.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(real_stderr, 2)  # the pipe's last writer here: the forwarder reads to its end
    # A child process that outlives the command still holds the pipe: do not wait for it long.
    forwarder.join(timeout=5)
    if not forwarder.is_alive():
      os.close(real_stderr)
