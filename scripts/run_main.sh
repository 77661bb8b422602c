#!/usr/bin/env bash
# The main job: sets up (idempotently), then trains a DP model on the embedded MNIST digits and
# prints its accuracy and epsilon. Extra arguments go to `dp-tfx demo` (e.g. --epochs 5 --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/dp-tfx demo "$@"
