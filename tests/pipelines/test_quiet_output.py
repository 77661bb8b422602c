"""The default output of a command is its own: the known-harmless lines of TensorFlow, CUDA's
stubs and MLMD are left out of stderr (from this process and its children), everything else is
kept, in order; --verbose keeps them all."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dp_tfx.pipelines import quiet_output

# Lines as TensorFlow 2.21, TFX 1.21's MLMD client and the kernel probe print them.
HARMLESS = [
  "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
  "I0000 00:00:1796625669.162393   22969 port.cc:153] oneDNN custom operations are on. You may "
  "see slightly different numerical results due to floating-point round-off errors.",
  "I0000 00:00:1796625669.163009   22969 cudart_stub.cc:31] Could not find cuda drivers on your "
  "machine, GPU will not be used.",
  "E0000 00:00:1796625676.809843   22969 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
  "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
  "W0000 00:00:1796625793.768936   23621 local_rendezvous.cc:412] Local rendezvous is aborting "
  "with status: INVALID_ARGUMENT: filter_size does not have enough elements, requested 96, got 48",
  "WARNING:absl:ArtifactQuery.property_predicate is not supported.",
  "WARNING:absl:Fallback to non-ZetaSQL contexts execution query due to: filter_query is not "
  "supported - ZetaSQL dependency removed",
]
KEPT = [
  "WARNING:absl:DPTrainer: no earlier run in the privacy budget of 'mnist:embedded'",
  "W0000 00:00:1796625794.294918   23621 local_rendezvous.cc:412] Local rendezvous is aborting "
  "with status: ABORTED: Shutdown",
  "E0000 00:00:1796625676.809843   22969 some_op.cc:52] a real error",
  "ERROR:absl:Execution 3 failed.",
  "Traceback (most recent call last):",
]


def test_exactly_the_known_harmless_lines_are_harmless():
  assert all(quiet_output.is_harmless(line) for line in HARMLESS)
  assert not any(quiet_output.is_harmless(line) for line in KEPT)


_WRITER = textwrap.dedent("""
  import os, subprocess, sys
  from dp_tfx.pipelines import quiet_output
  harmless, kept = {lines}
  with quiet_output.harmless_lines_filtered():
    for one, other in zip(harmless, kept):
      os.write(2, (one + "\\n").encode())       # as TensorFlow's C++ logging writes
      print(other, file=sys.stderr, flush=True)  # as Python's logging writes
    # A child process (a Beam worker) inherits the filtered descriptor.
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'child: kept\\\\n'); "
                    "os.write(2, {first!r}.encode() + b'\\\\n')"], check=True)
    sys.stderr.write("last, without a newline")
  print("after: kept", file=sys.stderr)
""")


def test_the_filter_keeps_every_other_line_of_the_process_and_its_children_in_order():
  script = _WRITER.format(lines=repr((HARMLESS[:5], KEPT)), first=HARMLESS[0])
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
  )
  assert result.stderr.splitlines() == [*KEPT, "child: kept", "last, without a newlineafter: kept"]


@pytest.mark.slow
def test_the_pipeline_command_prints_its_own_lines_and_one_json_object_when_refused(tmp_path):
  # A policy no run could meet: refused before training, after ExampleGen ran through MLMD.
  environment = {**os.environ, "DP_TFX_BUDGET_ROOT": str(tmp_path / "budgets")}
  command = [
    sys.executable,
    "-m",
    "dp_tfx.pipelines.cli",
    "pipeline",
    "--output-dir",
    str(tmp_path / "out"),
    "--max-epsilon",
    "0.01",
    "--no-audit",
    "--json",
  ]
  result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
  assert result.returncode == 2, result.stderr
  (line,) = result.stdout.splitlines()  # stdout is the one JSON object
  outcome = json.loads(line)
  assert (outcome["blessed"], outcome["pushed"], outcome["epsilon"]) == (False, False, None)
  (reason,) = outcome["reasons"]
  assert reason.startswith("refused before training, nothing was spent")
  assert "What you can do: train fewer steps or with more noise" in reason
  stderr = result.stderr.splitlines()
  assert f"dp-tfx pipeline: error: {reason}" in stderr
  assert not [line for line in stderr if quiet_output.is_harmless(line)]
  assert not [line for line in stderr if "absl::InitializeLog" in line or "ZetaSQL" in line]
