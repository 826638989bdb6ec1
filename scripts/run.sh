#!/usr/bin/env bash
# Set up and run the main job: every benchmark scenario, small versions, on the simulator.
# Extra arguments go to `saga bench` (e.g. --out DIR). Results: runs/quick/*/report.html.
# The simulator needs no Redis: setup skips installing it unless SAGA_SKIP_REDIS=0.
set -euo pipefail
cd "$(dirname "$0")/.."
SAGA_SKIP_REDIS=${SAGA_SKIP_REDIS:-1} bash scripts/setup.sh
.venv/bin/saga bench all --quick --out runs/quick "$@"
