#!/usr/bin/env bash
# Set up SAGA in a virtual environment at .venv (idempotent). Needs Python 3.11+.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A real Redis for the gateway's shared-state tests (skipped when it cannot be had).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ]; then
  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
    || echo "setup: could not install redis-server; the Redis tests will be skipped" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e '.[dev,engines]'
