#!/usr/bin/env bash
# Set up SAGA in a virtual environment at .venv (idempotent). Needs Python 3.11+.
#
# Redis: only the gateway's shared-state tests need a real redis-server. When it is missing
# and this runs as root on a Debian-like system, it is installed with apt-get, and said so.
# SAGA_SKIP_REDIS=1 skips that (Redis already running elsewhere, or not wanted: the
# simulator and `saga bench` never use it; the Redis tests then skip and say why).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${SAGA_SKIP_REDIS:-0}" != "1" ] && ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "setup: installing redis-server with apt-get (as root) for the gateway's Redis" \
      "tests; set SAGA_SKIP_REDIS=1 to skip" >&2
    (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
      || echo "setup: could not install redis-server; the Redis tests will be skipped" >&2
  else
    echo "setup: no redis-server; the gateway's Redis tests will skip (install it, or set" \
      "SAGA_SKIP_REDIS=1 to silence this)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e '.[dev,engines,gateway-events]'
# The simulator's engine model compiled with mypyc (the same decisions, about 1.6x faster:
# docs/engine.md, "Thirteenth pass"); skipped when current. Without a C compiler and Python's
# headers the simulator runs its Python sources, slower, with the same results.
.venv/bin/python scripts/build_compiled.py \
  || echo "setup: could not compile the engine model; the simulator runs as Python (slower)" >&2
# Ray Serve (the `ray` extra: SAGA's request router for Ray, tests/ray_serve). Its own line:
# when it cannot be installed (no wheel for this platform) the rest still works and those
# tests skip, saying why.
.venv/bin/python -m pip install --quiet -e '.[ray]' \
  || echo "setup: could not install ray[serve]; the Ray Serve tests will be skipped" >&2
