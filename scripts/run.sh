#!/usr/bin/env bash
# Set up and run the main job: the simulator on its default scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/saga simulate --out runs/default "$@"
