"""What ``saga bench ray`` reports of a run (the figures, without Ray)."""

from __future__ import annotations

import math

from saga.bench.ray_bench import CallRecord, LiveRun, load_bench


def test_a_runs_figures_come_from_its_answers() -> None:
    run = LiveRun(
        tct={"a": 2.0, "b": 4.0},
        calls=[
            CallRecord("a", 200, prompt_tokens=100, cached_tokens=0, replica="r1", router="i1"),
            CallRecord("a", 200, prompt_tokens=200, cached_tokens=100, replica="r1", router="i2"),
            CallRecord("b", 200, prompt_tokens=100, cached_tokens=0, replica="r1"),
            CallRecord("b", 200, prompt_tokens=100, cached_tokens=0, replica="r2"),
            CallRecord("b", 503),
        ],
    )
    summary = run.summary([0.1, 0.2, 0.3])
    assert summary["mean_tct"] == 3.0
    assert summary["errors"] == 1
    assert summary["prefix_hit_rate"] == 0.2  # 100 cached of 500 prompt tokens answered
    assert summary["affinity"] == 0.5  # a stayed on r1, b moved
    assert summary["replica_moves"] == 1
    assert summary["router_replicas_used"] == 2
    assert summary["cross_router_workflows"] == 1  # a went through i1 and i2
    assert summary["cross_router_affinity"] == 1.0  # and stayed on r1
    assert summary["route_overhead_ms"]["median"] == 0.2


def test_an_empty_run_reports_no_figures_rather_than_failing() -> None:
    summary = LiveRun().summary([])
    assert math.isnan(summary["mean_tct"]) and math.isnan(summary["route_overhead_ms"]["median"])


def test_the_builtin_scenario_and_its_quick_version_load() -> None:
    bench = load_bench()
    quick = bench.quick_version()
    assert bench.name == "ray" and "saga-ray" in bench.run
    assert (quick.sessions, quick.calls) == (16, 6)
    assert quick.cluster == bench.cluster
