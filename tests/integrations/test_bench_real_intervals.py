"""The intervals of saga's mean-TCT ratio in `saga bench real`'s summary, its report lines,
and their recomputation from a recorded runs.jsonl (made-up runs, no engines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from saga.bench.real import RealBench, render_markdown, summarize
from saga.bench.real_llama import SUMMARY_KEY as LLAMA_KEY
from saga.bench.real_rebuild import rebuild

ROOT = Path(__file__).resolve().parents[2]
NEW_KEYS = ("mean_ci_low", "mean_ci_high", "mean_session_ci_low", "mean_session_ci_high",
            "sessions")


def _run(case: str, policy: str, rep: int, tcts: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "case": case, "policy": policy, "repetition": rep,
        "tct": {f"s{i:03d}": t for i, t in enumerate(tcts)}, "failed": [], "calls": 10,
        "errors": 0, "wall": 30.0, "load": [1.0, 2.0], "prefix_queries": 100.0,
        "prefix_hits": 50.0, "retentions": {}, "prefix_lookups": [], "backends": [0, 1],
        **extra,
    }


def _runs(**extra: Any) -> list[dict[str, Any]]:
    """Two repetitions of 3 sessions: vllm-affinity exactly 2x saga's every TCT; sglang 1x
    saga's in the memory case; the light case equal."""
    runs = []
    for rep in range(2):
        saga = [4.0 + rep, 8.0, 16.0 + 2 * rep]
        runs += [_run("memory", "saga", rep, saga, **extra),
                 _run("memory", "vllm-affinity", rep, [2 * t for t in saga], **extra),
                 _run("memory", "sglang", rep, list(saga), **extra),
                 _run("light", "saga", rep, [1.0, 2.0, 3.0], **extra),
                 _run("light", "vllm-affinity", rep, [1.0, 2.0, 3.0], **extra),
                 _run("light", "sglang", rep, [1.0, 2.0, 3.0], **extra)]
    return runs


SPEC = RealBench(policies=("saga", "vllm-affinity", "sglang"), repetitions=2)


def test_the_speedups_carry_the_mean_ratios_intervals_over_cells_and_sessions() -> None:
    s = summarize(SPEC, _runs(), {}, quick=False, wall=60.0)
    affinity = s["speedup"]["saga/vllm-affinity"]
    assert affinity["mean_tct_ratio"] == 2.0
    assert {k: affinity[k] for k in NEW_KEYS} == {
        "mean_ci_low": 2.0, "mean_ci_high": 2.0, "mean_session_ci_low": 2.0,
        "mean_session_ci_high": 2.0, "sessions": 3}
    assert {k: s["speedup"]["saga/sglang"][k] for k in NEW_KEYS} == {
        "mean_ci_low": 1.0, "mean_ci_high": 1.0, "mean_session_ci_low": 1.0,
        "mean_session_ci_high": 1.0, "sessions": 3}
    # the geomean's figures stay beside them, as they were
    assert set(affinity) == {"geomean", "ci_low", "ci_high", "p", "n", "mean_tct_ratio",
                             *NEW_KEYS}
    assert affinity["n"] == 6 and affinity["geomean"] == 2.0
    assert s["speedup_light"]["saga/vllm-affinity"]["mean_session_ci_high"] == 1.0


def test_the_same_runs_give_a_byte_identical_summary() -> None:
    runs = _runs()
    runs[1]["tct"]["s001"] = 9.5  # a spread, so the resamples differ from one another
    first = json.dumps(summarize(SPEC, runs, {}, quick=False, wall=60.0))
    assert json.dumps(summarize(SPEC, runs, {}, quick=False, wall=60.0)) == first


def test_the_report_names_both_intervals_beside_the_geomeans() -> None:
    text = render_markdown(summarize(SPEC, _runs(), {}, quick=False, wall=60.0))
    assert ("SAGA's speedup, memory-bound: vllm-affinity 2.00x mean TCT (95 % CI 2.00-2.00 "
            "over (repetition, session) cells, 2.00-2.00 over the 3 sessions; paired geomean "
            "2.00, 95 % CI 2.00-2.00); sglang 1.00x mean TCT (95 % CI 1.00-1.00 over "
            "(repetition, session) cells, 1.00-1.00 over the 3 sessions; paired geomean 1.00, "
            "95 % CI 1.00-1.00).") in text
    assert ("/saga: the policy's mean TCT over saga's; its 95 % bootstrap interval over "
            "(repetition, session) cells / over sessions (each session's repetitions drawn "
            "together): vllm-affinity 2.00-2.00 / 2.00-2.00, sglang 1.00-1.00 / "
            "1.00-1.00.") in text


def test_a_summary_recorded_before_the_intervals_renders_as_it_did() -> None:
    s = summarize(SPEC, _runs(), {}, quick=False, wall=60.0)
    for key in ("speedup", "speedup_light"):
        for figures in s[key].values():
            for k in NEW_KEYS:
                del figures[k]
    text = render_markdown(s)
    assert ("SAGA's speedup, memory-bound: vllm-affinity 2.00x mean TCT (geomean 2.00, "
            "95 % CI 2.00-2.00); sglang 1.00x mean TCT (geomean 1.00, 95 % CI 1.00-1.00).") in text
    assert "/saga:" not in text


def _record(out: Path, summary: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary`` written as a record made before the intervals (their keys removed)."""
    old = json.loads(json.dumps(summary))
    for part in (old, old.get(LLAMA_KEY, {})):
        for key in ("speedup", "speedup_light"):
            for figures in part.get(key, {}).values():
                for k in NEW_KEYS:
                    del figures[k]
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(old, indent=2) + "\n")
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return old


def test_a_record_is_rebuilt_from_its_runs_as_the_bench_would_summarize_them(
    tmp_path: Path,
) -> None:
    runs = _runs()
    runs[0]["tct"]["s002"] = 30.0
    fresh = summarize(SPEC, runs, {}, quick=False, wall=60.0)
    _record(tmp_path / "vllm", fresh, runs)
    assert rebuild(tmp_path / "vllm") == json.loads(json.dumps(fresh))


def test_llama_cpps_part_is_rebuilt_from_its_own_runs(tmp_path: Path) -> None:
    vllm_runs = _runs()
    llama_runs = _runs(engine=LLAMA_KEY)
    for run in llama_runs:  # llama.cpp's saga twice as slow as on vLLM: its own ratios
        if run["policy"] == "saga":
            run["tct"] = {k: 2 * t for k, t in run["tct"].items()}
    summary = summarize(SPEC, vllm_runs, {}, quick=False, wall=60.0)
    summary["engines"] = ["vllm-cpu", LLAMA_KEY]
    summary[LLAMA_KEY] = summarize(SPEC, llama_runs, {}, quick=False, wall=60.0,
                                   engine="llama.cpp")
    old = _record(tmp_path / "both", summary, vllm_runs + llama_runs)
    rebuilt = rebuild(tmp_path / "both")
    assert rebuilt == json.loads(json.dumps(summary))
    assert rebuilt[LLAMA_KEY]["speedup"]["saga/vllm-affinity"]["mean_ci_high"] == 1.0
    assert rebuilt["speedup"]["saga/vllm-affinity"]["mean_ci_high"] == 2.0
    # every key but the speedups is the record's, in the record's order
    assert list(rebuilt) == list(old)


def test_the_script_prints_both_intervals_and_checks_the_recorded_figures(
    tmp_path: Path,
) -> None:
    fresh = summarize(SPEC, _runs(), {}, quick=False, wall=60.0)
    old = _record(tmp_path / "rec", fresh, _runs())
    script = ROOT / "benchmarks" / "real_intervals.py"
    env = {"PYTHONPATH": str(ROOT / "src")}
    ok = subprocess.run([sys.executable, str(script), str(tmp_path / "rec")],
                        capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert ok[0] == "rec vllm-cpu memory (saga 9.83 s, 3 sessions x 2 repetitions)"
    assert ok[1] == ("    vllm-affinity  2.00x cells 2.00-2.00 sessions 2.00-2.00 | geomean 2.00 "
                     "(2.00-2.00) | runs 2.00 2.00 | design effect nan")
    assert ok[2].startswith("  * sglang         1.00x cells 1.00-1.00")
    assert ok[-1] == "  recorded figures kept: yes"
    old["speedup"]["saga/sglang"]["geomean"] = 1.5  # a record the runs do not give
    (tmp_path / "rec" / "summary.json").write_text(json.dumps(old))
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "rec")],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert bad.splitlines()[-1] == "  recorded figures kept: NO"


def test_a_records_gateway_presets_are_its_probes_and_the_last_for_the_extra_rounds() -> None:
    import pytest

    from saga.bench.real import calibrated_cluster
    from saga.bench.real_rebuild import gateway_presets
    from saga.engine.cluster import get_cluster
    from saga.errors import UserError

    spec = RealBench()  # 3 repetitions; the light case 6
    slow = get_cluster("cpu-tiny").cost_model().efficiency.model_copy(update={"mfu": 0.1})
    probes = [{}, {"solo": {"efficiency": slow.model_dump()}}, {}]
    presets = gateway_presets(spec, {"repetitions": probes})
    plain, fitted = calibrated_cluster(spec, {}), calibrated_cluster(spec, probes[1])
    assert plain != fitted
    assert [presets[r] for r in range(6)] == [plain, fitted, plain, plain, plain, plain]
    with pytest.raises(UserError, match="2 probes for 3 repetitions"):
        gateway_presets(spec, {"repetitions": probes[:2]})


def test_resimulate_refuses_a_record_without_calibrated_vllm_runs(tmp_path: Path) -> None:
    import pytest

    from saga.bench.real_rebuild import resimulate
    from saga.errors import UserError

    (tmp_path / "summary.json").write_text(json.dumps({"scenario": "real", "engines": []}))
    (tmp_path / "runs.jsonl").write_text("")
    with pytest.raises(UserError, match="no calibrated vLLM part"):
        resimulate(tmp_path)
