"""`saga bench real`'s summary and its RESULTS.md section, from made-up runs (no engines)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from saga.bench.real import (
    RealBench,
    interleaved,
    put_real_section,
    render_markdown,
    repetitions_text,
    run_real,
    summarize,
)
from saga.bench.real_llama import gateway_config as llama_gateway_config
from saga.bench.sections import keep_sections
from saga.errors import UserError


def _run(case: str, policy: str, rep: int, tcts: list[float], failed: int = 0) -> dict:
    return {
        "case": case, "policy": policy, "repetition": rep,
        "tct": {f"s{i:03d}": t for i, t in enumerate(tcts)},
        "failed": [f"s{i:03d}" for i in range(failed)], "calls": 10, "errors": failed,
        "wall": 30.0, "load": [1.0, 3.0], "prefix_queries": 1000.0, "prefix_hits": 250.0,
        "retentions": {"pin": 2, "release": 1}, "prefix_lookups": [[4, 40, 30], [0, 0, 0]],
        "backends": [0, 1], "deferred": {"s000": 4.0, "s001": 2.0} if policy == "saga" else {},
    }


def test_summary_has_the_speedups_and_the_simulators_error() -> None:
    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=2)
    runs = [
        _run("memory", "saga", 0, [10.0, 20.0]), _run("memory", "vllm-affinity", 0, [20.0, 40.0]),
        _run("memory", "saga", 1, [10.0, 30.0]),
        _run("memory", "vllm-affinity", 1, [20.0, 30.0], failed=1),
        _run("light", "saga", 0, [5.0, 5.0]), _run("light", "vllm-affinity", 0, [5.0, 5.0]),
    ]
    sim = {"memory": {"saga": 18.0, "vllm-affinity": 18.75}, "light": {"saga": 5.0,
                                                                        "vllm-affinity": 5.0}}
    s = summarize(spec, runs, sim, quick=False, wall=120.0)
    memory = s["cases"]["memory"]
    assert memory["saga"]["mean_tct"] == pytest.approx((15.0 + 20.0) / 2)
    assert memory["vllm-affinity"]["mean_tct"] == pytest.approx((30.0 + 25.0) / 2)
    assert memory["vllm-affinity"]["failed"] == 1
    assert (memory["saga"]["deferred"], memory["saga"]["deferred_seconds"]) == (4, 12.0)
    assert memory["vllm-affinity"]["deferred"] == 0
    assert memory["saga"]["hit_rate"] == pytest.approx(0.25)
    assert memory["saga"]["retentions"] == {"pin": 4, "release": 2}
    assert (memory["saga"]["lookups"], memory["saga"]["estimate_blocks"],
            memory["saga"]["event_blocks"]) == (8, 80, 60)
    sp = s["speedup"]["saga/vllm-affinity"]
    assert sp["n"] == 4 and sp["mean_tct_ratio"] == pytest.approx(27.5 / 17.5)
    # paired per repetition and workflow: 20/10, 40/20, 20/10, 30/30
    assert sp["geomean"] == pytest.approx(math.exp((3 * math.log(2.0)) / 4))
    assert s["speedup_light"]["saga/vllm-affinity"]["mean_tct_ratio"] == pytest.approx(1.0)
    assert s["sim_error"] == {"saga": pytest.approx(18.0 / 17.5 - 1),
                              "vllm-affinity": pytest.approx(18.75 / 27.5 - 1)}
    assert s["load_average"] == {"min": 1.0, "mean": 2.0, "max": 3.0}
    text = render_markdown(s)
    assert text.startswith("## Real engines\n")
    assert "| vllm-affinity | 27.50 | 30.0 25.0 | 1.57 | 25.0% | 1 | 0 |" in text
    assert "| saga | 17.50 | 15.0 20.0 | 1.00 | 25.0% | 0 | 4, 3.0 |" in text
    assert "load average (1 min) during the runs 1.0-3.0" in text


def test_quick_is_one_repetition_of_smaller_cases() -> None:
    quick = RealBench().quick()
    assert quick.repetitions == 1
    assert [c.name for c in quick.cases] == ["memory", "light"]
    assert [c.name for c in quick.llama_cases] == ["memory", "light"]
    assert all(q.sessions < f.sessions for q, f in zip(quick.llama_cases,
                                                       RealBench().llama_cases, strict=True)
               if q.name == "memory")
    full = RealBench()
    assert full.repetitions >= 3 and full.kv_blocks == 81
    memory = full.cases[0]
    assert (memory.sessions, memory.calls, memory.arrival_interval) == (12, 3, 0.25)
    # llama.cpp runs the same sessions with shorter prompts, and records them as its cases
    llama = full.for_llama()
    assert llama.cases == full.llama_cases and llama.cases[0].sessions == memory.sessions
    assert llama.cases[0].max_prompt_chars < memory.max_prompt_chars
    # the light case twice as often as the memory case, on both engines; quick: once
    assert [full.reps(c) for c in full.cases] == [3, 6]
    assert [llama.reps(c) for c in llama.cases] == [3, 6]
    assert [quick.reps(c) for c in (*quick.cases, *quick.llama_cases)] == [1, 1, 1, 1]


def test_a_request_of_max_model_len_must_fit_the_kv() -> None:
    with pytest.raises(ValueError, match="exceeds the KV of 40 usable blocks"):
        RealBench(kv_blocks=41, max_model_len=8192)
    assert RealBench(kv_blocks=41, max_model_len=4096).max_model_len == 4096


def test_the_real_section_goes_into_results_in_place_and_survives_a_regeneration(
    tmp_path: Path,
) -> None:
    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=1)
    runs = [_run("memory", "saga", 0, [10.0]), _run("memory", "vllm-affinity", 0, [20.0])]
    s = summarize(spec, runs, {"memory": {"saga": 10.0, "vllm-affinity": 20.0}}, quick=True,
                  wall=60.0)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## paper (quick)\n\ntable\n")
    put_real_section(results, s)
    put_real_section(results, s)  # a second run replaces the section, never appends one
    text = results.read_text()
    assert text.count("## Real engines") == 1
    assert text.startswith("# Results\n\n## paper (quick)\n\ntable\n\n<!-- kept: real -->\n")
    assert text.endswith("<!-- /kept: real -->\n")
    regenerated = keep_sections(text, "# Results\n\n## paper (quick)\n\nnew table\n")
    assert "new table" in regenerated and regenerated.count("## Real engines") == 1


def test_runs_are_interleaved_with_the_order_rotated_each_repetition() -> None:
    spec = RealBench(policies=("saga", "vllm-affinity", "sglang")).only(repetitions=2)
    order = [(rep, case.name, policy) for rep, case, policy in interleaved(spec)]
    assert order == [
        (0, "memory", "saga"), (0, "memory", "vllm-affinity"), (0, "memory", "sglang"),
        (0, "light", "saga"), (0, "light", "vllm-affinity"), (0, "light", "sglang"),
        (1, "memory", "vllm-affinity"), (1, "memory", "sglang"), (1, "memory", "saga"),
        (1, "light", "vllm-affinity"), (1, "light", "sglang"), (1, "light", "saga"),
    ]


def test_a_case_with_its_own_repetitions_runs_on_after_the_others_stop() -> None:
    base = RealBench(policies=("saga", "vllm-affinity"), repetitions=1)
    light = base.cases[1].model_copy(update={"repetitions": 3})
    spec = base.model_copy(update={"cases": (base.cases[0], light)})
    assert spec.reps(spec.cases[0]) == 1 and spec.reps(light) == 3 and spec.most_reps() == 3
    order = [(rep, case.name, policy) for rep, case, policy in interleaved(spec)]
    assert order == [
        (0, "memory", "saga"), (0, "memory", "vllm-affinity"),
        (0, "light", "saga"), (0, "light", "vllm-affinity"),
        (1, "light", "vllm-affinity"), (1, "light", "saga"),
        (2, "light", "saga"), (2, "light", "vllm-affinity"),
    ]
    # --repetitions N runs every case N times, whatever its own count
    again = spec.only(repetitions=2)
    assert [again.reps(c) for c in again.cases] == [2, 2]
    assert [again.reps(c) for c in again.llama_cases] == [2, 2]
    settings = json.loads(spec.model_dump_json())
    assert repetitions_text(settings) == "1 interleaved repetition(s), the light case 3"
    assert repetitions_text(json.loads(again.model_dump_json())) == \
        "2 interleaved repetition(s)"


def test_llama_cpp_replicas_hold_the_running_calls_and_bind_on_the_idle_ones(
    tmp_path: Path,
) -> None:
    settings = RealBench().llama
    # running calls always fit the unified buffer (llama.cpp fails them all otherwise)
    assert settings.ctx_size == settings.concurrency * settings.ctx_per_call == 2 * 3456
    assert settings.kv_blocks(128) == 54 and settings.slots > settings.concurrency
    assert settings.cache_ram == 0  # no undeclared host prompt cache
    replicas = [("http://127.0.0.1:1", tmp_path / "a"), ("http://127.0.0.1:2", tmp_path / "b")]
    config = llama_gateway_config(RealBench(), settings, replicas, "saga", "cpu-tiny")
    assert [(b.kind, b.slots, b.max_concurrency, b.slot_save_path) for b in config.backends] == [
        ("llamacpp", 4, 2, str(tmp_path / "a")), ("llamacpp", 4, 2, str(tmp_path / "b"))]
    assert not config.sticky_sessions and config.max_defer == RealBench().max_defer
    with pytest.raises(UserError, match="engine must be one of vllm, llama, both"):
        run_real(tmp_path, engine="sglang")


def test_llama_cpp_figures_go_under_their_own_key_after_vllms() -> None:
    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=1)
    vllm = summarize(spec, [_run("memory", "saga", 0, [10.0]),
                            _run("memory", "vllm-affinity", 0, [20.0])],
                     {"memory": {"saga": 10.0, "vllm-affinity": 20.0}}, quick=True, wall=60.0)
    llama_runs = [_run("memory", "saga", 0, [8.0]), _run("memory", "vllm-affinity", 0, [16.0])]
    llama = summarize(spec, llama_runs, {}, quick=True, wall=30.0, engine="llama.cpp")
    assert llama["engine"] == "llama.cpp" and vllm["engine"] == "vllm-cpu"
    assert "sim_error" not in llama
    assert llama["speedup"]["saga/vllm-affinity"]["mean_tct_ratio"] == pytest.approx(2.0)
    llama["settings"]["llama_ctx_size"] = 14336
    llama["cases"]["memory"]["saga"]["slot_actions"] = {"save": 3, "restore": 1, "erase": 2}
    llama["cases"]["memory"]["vllm-affinity"]["slot_actions"] = {"save": 0, "restore": 0,
                                                                 "erase": 0}
    both = {**vllm, "engines": ["vllm-cpu", "llamacpp"], "llamacpp": llama}
    text = render_markdown(both)
    alone = render_markdown(vllm)
    assert "`saga bench real --quick --engine vllm`: 2 vLLM-CPU" in alone
    # vLLM's part unchanged but for the command (both engines: the default), llama.cpp's after
    head = alone.replace(" --engine vllm", "", 1)
    assert text.startswith(head)
    tail = text[len(head):]
    assert tail.startswith("### llama.cpp\n")
    assert "4 slots sharing one unified KV buffer of 14,336 tokens" in tail
    assert "| vllm-affinity | 16.00 | 16.0 | 2.00 | 25.0% | 0 | 0 | 2/1/0 | - |" in tail
    assert "Slot actions (save/restore/erase): saga 3/1/2, vllm-affinity 0/0/0." in tail
    only = render_markdown({"scenario": "real", "quick": True, "engines": ["llamacpp"],
                            "llamacpp": llama})
    assert only == "## Real engines\n\n" + tail


def test_both_engines_keep_vllms_keys_on_top_and_put_llama_cpps_under_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--engine both` (no engines here: vLLM's runs and llama.cpp's part are stand-ins):
    vLLM runs first, its summary stays at the top level, llama.cpp's goes under
    ``llamacpp``, and real.md has both parts in that order."""
    import contextlib

    import saga.bench.real as real
    import saga.bench.real_llama as real_llama
    from saga.integrations import engines as eng

    if not real.trace_path("miniswe").exists():
        pytest.skip("needs the LMCache agent traces (../shared/traces)")
    order: list[str] = []

    @contextlib.contextmanager
    def engines(*_: object) -> Any:
        order.append("vllm")
        fake = real.Engines()
        fake.sets = {"saga": [("http://saga", None)], "stock": [("http://stock", None)]}
        yield fake

    def run_once(_spec: object, _replicas: object, policy: str, *_: object) -> dict[str, Any]:
        return {k: v for k, v in _run("memory", policy, 0, [10.0 if policy == "saga" else 20.0]
                                      ).items() if k not in ("case", "policy", "repetition")}

    def run_llama(spec: RealBench, *_: object, **__: object) -> dict[str, Any]:
        order.append("llama")
        seen.append(spec)
        runs = [_run("memory", "saga", 0, [8.0]), _run("memory", "vllm-affinity", 0, [16.0])]
        summary = summarize(spec, runs, {}, quick=True, wall=1.0, engine="llama.cpp")
        summary["settings"]["llama_ctx_size"] = spec.llama.ctx_size
        return summary

    seen: list[RealBench] = []
    monkeypatch.setattr(real, "start_engines", engines)
    monkeypatch.setattr(real, "_run_once", run_once)
    monkeypatch.setattr(real_llama, "run_llama", run_llama)
    monkeypatch.setattr(eng, "find_vllm_python", lambda: Path("python"))
    monkeypatch.setattr(eng, "find_llama_server", lambda: Path("llama-server"))
    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=1).quick()
    # no calibration probe: no engine answers here (test_bench_real_probe.py fakes one)
    spec = spec.model_copy(update={"cases": spec.cases[:1], "calibrate": False})
    summary = run_real(tmp_path, bench=spec, engine="both", simulate=False,
                       progress=lambda _: None)
    assert order == ["vllm", "llama"]
    assert summary["engine"] == "vllm-cpu" and summary["engines"] == ["vllm-cpu", "llamacpp"]
    assert summary["speedup"]["saga/vllm-affinity"]["mean_tct_ratio"] == pytest.approx(2.0)
    assert summary["llamacpp"]["engine"] == "llama.cpp"
    assert set(summary["llamacpp"]["speedup"]) == {"saga/vllm-affinity"}
    text = (tmp_path / "real.md").read_text()
    assert text.startswith("## Real engines\n\n`saga bench real`: 2 vLLM-CPU replicas")
    assert text.index("| saga | 10.00 |") < text.index("### llama.cpp") < text.index(
        "| saga | 8.00 |")
    # llama.cpp ran its own cases, and the whole benchmark's time is stated
    assert seen[0].cases == spec.llama_cases and seen[0].cases != spec.cases
    assert summary["total_wall_seconds"] > 0
    assert "The whole benchmark, vLLM then llama.cpp, took 0.0 min" in text


@pytest.mark.parametrize("quick", [False, True])
def test_every_llama_cpp_call_fits_the_kv_a_running_call_is_given(quick: bool) -> None:
    # a call longer than ctx_per_call could overflow llama.cpp's unified buffer (run_llama
    # refuses to start); the cases and the KV are sized together
    import time

    from saga.bench.real import replay_plans
    from saga.bench.real_llama import longest_call, longest_run_call
    from saga.integrations import engines as eng

    if not (eng.tiny_model_dir() / "tokenizer.json").exists():
        pytest.skip("the tiny model's tokenizer is not built (scripts/engines.sh)")
    bench = RealBench().quick() if quick else RealBench()
    plans = replay_plans(bench.llama_cases)
    nonce = f"{time.time_ns():x}"  # as run_llama's
    longest = longest_run_call(bench.for_llama(), plans, nonce)
    assert bench.llama.ctx_per_call - 256 < longest <= bench.llama.ctx_per_call
    # the runs' salts are longer than a generic one: the check must count them
    assert longest > max(longest_call(p) for p in plans.values())
