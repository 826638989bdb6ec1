"""The paired ratios by the baseline's replica load and the lost-KV calls of recorded real
runs (saga.bench.real_pairs)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from saga.bench.real_pairs import Misses, PlaceGroup, misses, replica_groups, sessions_by_place


def _row(workflow: str, index: int, replica: int, prompt: int, cached: int) -> list[Any]:
    # call_log: workflow, index, sent, latency, replica, status, prompt, cached
    return [workflow, index, 0.0, 1.0, replica, 200, prompt, cached]


def _run(policy: str, key: int, tct: dict[str, float], homes: dict[str, int]) -> dict[str, Any]:
    return {"policy": policy, "key": key, "tct": tct,
            "call_log": [_row(w, 0, r, 100, 0) for w, r in homes.items()]}


def test_ratios_group_by_how_many_sessions_share_the_baselines_replica() -> None:
    runs = [
        _run("saga", 0, {"a": 2.0, "b": 2.0, "c": 2.0}, {"a": 0, "b": 1, "c": 0}),
        # the baseline puts a alone on replica 1, b and c together on replica 0
        _run("base", 0, {"a": 1.0, "b": 4.0, "c": 8.0}, {"a": 1, "b": 0, "c": 0}),
        _run("saga", 1, {"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 0, "b": 1, "c": 0}),
        _run("base", 1, {"a": 1.0, "b": 2.0, "c": 2.0}, {"a": 1, "b": 0, "c": 0}),
    ]
    alone, pair = replica_groups(runs, "saga", "base")
    assert (alone.sessions, alone.pairs) == (1, 2)
    assert alone.geomean == pytest.approx(math.sqrt(0.5 * 1.0))
    assert alone.sd_log == pytest.approx(math.log(2) / 2)
    assert (pair.sessions, pair.pairs) == (2, 4)
    assert pair.geomean == pytest.approx((2 * 4 * 2 * 2) ** 0.25)


def test_a_call_that_lost_its_kv_counts_on_its_replica_or_as_moved() -> None:
    run = {"call_log": [
        _row("a", 0, 0, 1000, 0),
        _row("a", 1, 0, 1100, 990),  # a hit
        _row("a", 2, 0, 1200, 500),  # less than half of 1,100 cached: lost on its replica
        _row("b", 0, 1, 2000, 0),
        _row("b", 1, 0, 3000, 0),  # moved to replica 0: recomputed
        _row("b", 2, 0, 6000, 2990),  # a big new part, but the 3,000 before were cached
    ]}
    assert misses(run) == Misses(own=1, own_tokens=700, moved=1, moved_tokens=3000)


def test_sessions_split_by_the_door_and_by_their_replicas_load() -> None:
    run = _run("saga", 0, {"a": 2.0, "b": 4.0, "c": 6.0, "d": 9.0, "e": 1.0},
               {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1})
    run["deferred"] = {"d": 3.0, "c": 1.0}
    run["tct"]["lost"] = 5.0  # no first call recorded (failed before it): left out
    assert sessions_by_place(run) == [
        PlaceGroup(held=False, sessions=2, count=1, mean_tct=1.0, mean_wait=0.0),
        PlaceGroup(held=False, sessions=3, count=2, mean_tct=3.0, mean_wait=0.0),
        PlaceGroup(held=True, sessions=2, count=1, mean_tct=9.0, mean_wait=3.0),
        PlaceGroup(held=True, sessions=3, count=1, mean_tct=6.0, mean_wait=1.0),
    ]
