#!/usr/bin/env bash
# The main job: sets up (idempotently), then runs the DP MNIST TFX pipeline on the embedded digits
# (ExampleGen -> DPTrainer -> PrivacyEvaluator -> Pusher) and prints epsilon, the policy and
# whether the model was pushed. Extra arguments go to `dp-tfx pipeline` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/dp-tfx pipeline "$@"
