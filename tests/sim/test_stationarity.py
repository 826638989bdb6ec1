"""Service by arrival slice and the stationarity verdict (saga.metrics.stationarity)."""

from __future__ import annotations

import math

import pytest

from saga.metrics.stationarity import ArrivalSlice, arrival_slices, drifting, met_level
from saga.sim.simulator import CallRecord, SimResult, WorkflowRecord


def _workflow(name: str, arrival: float, finished: float, rejected: str = "") -> WorkflowRecord:
    return WorkflowRecord(name, "t", "a", arrival, arrival, finished, 1, None, rejected)


def _call(workflow: str, prompt: int, cached: int, host: int = 0) -> CallRecord:
    return CallRecord(workflow, workflow + "/0", 0, 0.0, 0.0, 0.0, 0.0, prompt, cached, host,
                      0, 1, 0)


def _result(workflows: list[WorkflowRecord], calls: list[CallRecord]) -> SimResult:
    window = (min(w.arrival for w in workflows), max(w.arrival for w in workflows))
    return SimResult("p", "c", 0, workflows, calls, [], 0.0, 0.0, 0, arrival_window=window)


def test_met_level_needs_a_finish_no_rejection_and_the_bound() -> None:
    assert met_level(_workflow("a", 10.0, 30.0), 10.0, 2.0)  # TCT 20 = 2 x 10: on the bound
    assert not met_level(_workflow("a", 10.0, 30.5), 10.0, 2.0)
    assert not met_level(_workflow("a", 10.0, -1.0), 10.0, 2.0)  # never finished
    assert not met_level(_workflow("a", 10.0, 12.0, rejected="over context"), 10.0, 2.0)


def test_slices_count_each_workflow_where_it_arrived() -> None:
    # window 0-100 in four spans of 25; the last arrival (100) falls in the last span
    workflows = [
        _workflow("a", 0.0, 10.0),     # slowdown 1, met
        _workflow("b", 24.9, 54.9),    # slowdown 3, missed
        _workflow("c", 25.0, 45.0),    # slowdown 2, met
        _workflow("d", 60.0, -1.0),    # unfinished: missed, no slowdown
        _workflow("e", 100.0, 140.0),  # slowdown 4, missed
    ]
    calls = [_call("a", 100, 50), _call("b", 100, 0, host=10), _call("c", 300, 300),
             _call("e", 200, 20), _call("e", 200, 180)]
    isolated = dict.fromkeys("abcde", 10.0)
    parts = arrival_slices(_result(workflows, calls), isolated, slices=4, slowdown=2.0)
    assert [(p.start, p.end) for p in parts] == [(0.0, 25.0), (25.0, 50.0), (50.0, 75.0),
                                                 (75.0, 100.0)]
    assert [p.workflows for p in parts] == [2, 1, 1, 1]
    assert [p.met for p in parts] == [1, 1, 0, 0]
    assert [p.attainment for p in parts] == [0.5, 1.0, 0.0, 0.0]
    assert parts[0].slowdown_mean == pytest.approx(2.0)  # (1 + 3) / 2
    assert parts[0].slowdown_median == pytest.approx(3.0)  # the upper of an even count
    assert parts[1].slowdown_mean == pytest.approx(2.0)
    assert math.isnan(parts[2].slowdown_mean)
    assert math.isnan(parts[2].slowdown_median)
    assert parts[3].slowdown_mean == pytest.approx(4.0)
    assert [p.hit_rate for p in parts] == [60 / 200, 1.0, 0.0, 200 / 400]


def test_slices_reject_zero() -> None:
    with pytest.raises(ValueError):
        arrival_slices(_result([_workflow("a", 0.0, 1.0)], []), {"a": 1.0}, slices=0)


def _slice(met: int, hit: float) -> ArrivalSlice:
    return ArrivalSlice(0.0, 1.0, 10, met, 1.0, 1.0, hit)


def test_drifting_judges_the_late_arrivals_and_the_hit_rate() -> None:
    # the warm-up slice (first) is not compared, however different
    assert drifting([_slice(0, 0.0), _slice(10, 0.9), _slice(9, 0.85)]) == []
    assert drifting([_slice(10, 0.9), _slice(10, 0.9), _slice(8, 0.9)]) == [
        "late arrivals 80.0 % within the level"]
    assert drifting([_slice(10, 0.9), _slice(10, 0.9), _slice(9, 0.9)], target=0.95) == [
        "late arrivals 90.0 % within the level"]
    assert drifting([_slice(10, 0.9), _slice(10, 0.9), _slice(10, 0.849)]) == [
        "hit rate 0.900 -> 0.849"]
    assert drifting([_slice(10, 0.9), _slice(10, 0.9), _slice(5, 0.5)]) == [
        "late arrivals 50.0 % within the level", "hit rate 0.900 -> 0.500"]
    # only the last slice is judged: a middle one that missed does not count
    assert drifting([_slice(10, 0.9), _slice(10, 0.9), _slice(0, 0.9), _slice(9, 0.9)]) == []


def test_drifting_needs_three_slices() -> None:
    with pytest.raises(ValueError):
        drifting([_slice(10, 0.9), _slice(10, 0.9)])
