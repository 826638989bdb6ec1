#!/usr/bin/env bash
# Set up and run the main job: every benchmark scenario, small versions, on the simulator.
# Extra arguments go to `saga bench` (e.g. --out DIR). Results: runs/quick/*/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/saga bench all --quick --out runs/quick "$@"
