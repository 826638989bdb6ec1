"""Goodput capacity: the bisection finds the known answer, on a synthetic attainment and on a
tiny simulation whose threshold follows from its arrival draws."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from saga.bench.capacity import BRACKET_STEPS, CapacitySearch, capacity_on, search
from saga.core.workflow import Call, Prompt, Workflow
from saga.sim.cluster import ClusterSpec, get_cluster
from saga.sim.run import isolated_tcts


def step(threshold: float) -> Callable[[float], float]:
    return lambda rate: 1.0 if rate <= threshold else 0.0


def test_bisection_grows_then_halves_to_the_tolerance() -> None:
    capacity, probes = search(step(0.37), 0.1, target=0.9, tolerance=0.05)
    # 0.1, 0.2 served; 0.4 not: bracket [0.2, 0.4], then midpoints until 0.375 <= 1.05 * lo
    expected = [0.1, 0.2, 0.4, 0.3, 0.35, 0.375, 0.3625]
    assert [r for r, _ in probes] == pytest.approx(expected, rel=1e-12)
    assert [s for _, s in probes] == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert capacity == pytest.approx(0.3625, rel=1e-12)


def test_bisection_shrinks_when_the_start_fails() -> None:
    capacity, probes = search(step(0.03), 0.1, target=0.9, tolerance=0.05)
    expected = [0.1, 0.05, 0.025, 0.0375, 0.03125, 0.028125, 0.0296875, 0.03046875]
    assert [r for r, _ in probes] == pytest.approx(expected, rel=1e-12)
    assert capacity == pytest.approx(0.0296875, rel=1e-12)
    assert capacity * 1.05 + 1e-15 >= 0.03046875  # the failing rate is within 5 %


def test_a_share_exactly_at_the_target_is_served() -> None:
    state = CapacitySearch(1.0, target=0.9, tolerance=0.05)
    assert state.record(1.0, 0.9) is True
    assert state.record(2.0, 0.89) is False
    assert (state.served, state.failed, state.bracketed) == (1.0, 2.0, True)


def test_a_policy_that_never_meets_the_level_has_capacity_zero() -> None:
    capacity, probes = search(lambda _: 0.5, 1.0, target=0.9, tolerance=0.05)
    assert capacity == 0.0
    assert [r for r, _ in probes] == pytest.approx([2.0**-k for k in range(BRACKET_STEPS + 1)])


# ---- a tiny simulation whose capacity is known --------------------------------------------
BT = 16
SLOWDOWN = 1.5


def serial_replica() -> ClusterSpec:
    """One replica that runs one call at a time: the second workflow waits for the first."""
    base = get_cluster("test-2")
    engine = base.engine.model_copy(update={"max_num_seqs": 1})
    return base.model_copy(update={"replicas": 1, "engine": engine})


def pair(seed: int) -> list[Workflow]:
    """Two single-call workflows of the same size, with nothing cached in common."""
    return [
        Workflow(f"s{seed}w{i}", "t", "a", float(i),
                 (Call("c0", Prompt(40 * BT, (), ((0, 40),)), 50),), block_tokens=BT)
        for i in range(2)
    ]


def threshold(seed: int, alone: float) -> float:
    """The highest rate at which the second workflow still meets SLOWDOWN.

    At rate r it arrives at g / r (g: the seed's first unit exponential draw, the gap
    the re-timing scales), waits until the first finishes at D (= ``alone``) and then
    takes D: TCT = 2D - g/r <= SLOWDOWN * D  <=>  r <= g / ((2 - SLOWDOWN) * D).
    """
    g = float(np.random.default_rng(seed).exponential(1.0, 1)[0])
    return g / ((2 - SLOWDOWN) * alone)


@pytest.mark.parametrize(("target", "pick"), [(0.9, min), (0.7, max)])
def test_capacity_of_a_tiny_simulation_is_the_derived_threshold(
    target: float, pick: Callable[[float, float], float]
) -> None:
    cluster = serial_replica()
    per_seed = {0: pair(0), 1: pair(1)}
    alone = isolated_tcts(cluster, per_seed[0])["s0w0"]
    assert alone > 0
    # pooled over two seeds (4 workflows): one seed's second workflow missing leaves 75 %,
    # not served at 90 % (the lower threshold binds) but served at 70 % (the higher one)
    known = pick(threshold(0, alone), threshold(1, alone))
    start = 1.0
    with ThreadPoolExecutor(1) as pool:
        case = capacity_on(
            cluster, per_seed, ["vllm-rr"], start=start, slowdown=SLOWDOWN, target=target,
            tolerance=0.05, pool=pool, say=lambda _: None,
        )
    expected, probes = search(step(known), start, target=0.5, tolerance=0.05)
    assert [p.rate for p in case.points] == [r for r, _ in probes]
    assert case.capacity["vllm-rr"] == expected
    assert case.bracketed["vllm-rr"]
    served = [p.rate for p in case.points if p.served]
    failed = [p.rate for p in case.points if not p.served]
    assert max(served) <= known < min(failed) <= max(served) * 1.05
    for p in case.points:  # the pooled share is the mean of the two seeds' shares
        assert p.attainment == pytest.approx(sum(p.per_seed.values()) / 2)
        assert set(p.per_seed.values()) <= {0.5, 1.0}


def test_capacity_ratios_name_the_reference_first() -> None:
    from saga.bench.capacity import CapacityCase

    case = CapacityCase("w", "c", 1, [0], 2, capacity={"saga": 0.4, "a": 0.2, "b": 0.0})
    assert case.ratios("saga") == {"saga/a": pytest.approx(2.0), "saga/b": math.inf}


def test_growth_stops_at_the_burst_rate_and_says_so() -> None:
    capacity, probes = search(lambda _: 1.0, 0.1, target=0.9, tolerance=0.05, max_rate=1.0)
    assert [r for r, _ in probes] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert capacity == 1.0
    state = CapacitySearch(0.1, target=0.9, tolerance=0.05, max_rate=1.0)
    for rate, share in probes:
        state.record(rate, share)
    assert state.next_rate() is None and not state.bracketed


def test_burst_rate_spans_a_tenth_of_the_median_alone() -> None:
    from saga.bench.capacity import burst_rate

    per_seed = {0: pair(0), 1: pair(1) + pair(2)}
    isolated = {0: {"a": 10.0, "b": 30.0}, 1: {"c": 20.0, "d": 20.0, "e": 50.0, "f": 40.0}}
    # median of 10, 20, 20, 30, 40, 50 (upper) is 30; the fewest workflows, 2, span one gap
    assert burst_rate(per_seed, isolated) == pytest.approx(1 / 3.0)
