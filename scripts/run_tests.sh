#!/usr/bin/env bash
# Runs the test suite after an idempotent set-up. Arguments go to pytest, e.g.
#   bash scripts/run_tests.sh -m "not slow"     # the quick subset
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
