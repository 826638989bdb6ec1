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
from saga.engine.cluster import ClusterSpec, get_cluster
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
            tolerance=0.05, window_tcts=None, warmup_tcts=0.0, pool=pool, say=lambda _: None,
        )
    expected, probes = search(step(known), start, target=0.5, tolerance=0.05)
    assert [p.rate for p in case.points] == [r for r, _ in probes]
    assert case.capacity["vllm-rr"] == expected
    assert case.bracketed["vllm-rr"]
    served = [p.rate for p in case.points if p.served]
    failed = [p.rate for p in case.points if not p.served]
    assert max(served) <= known < min(failed) <= max(served) * 1.05
    decisive = 1 if target == 0.9 else 2  # misses of the 4 workflows that fail the target
    for p in case.points:
        # a failed probe stops at its decisive miss: its share is then an upper bound
        assert p.stopped or p.served
        if not p.served:
            assert p.attainment == (4 - decisive) / 4
        elif not p.stopped:  # ran to the end: the pooled share is the mean of the seeds'
            assert p.attainment == pytest.approx(sum(p.per_seed.values()) / 2)
            assert set(p.per_seed.values()) <= {0.5, 1.0}
        else:  # served once enough met the level: at least the target
            assert p.attainment >= target


def test_capacity_ratios_name_the_reference_first() -> None:
    from saga.bench.capacity import CapacityCase

    case = CapacityCase("w", "c", 1, [0], 2, capacity={"saga": 0.4, "a": 0.2, "b": 0.0})
    assert case.ratios("saga") == {"saga/a": pytest.approx(2.0), "saga/b": math.inf}


def test_a_served_probe_that_ran_out_of_workflows_stops_the_growth() -> None:
    capacity, probes = search(lambda _: 1.0, 0.1, target=0.9, tolerance=0.05, limit=0.4)
    assert [r for r, _ in probes] == pytest.approx([0.1, 0.2, 0.4])
    assert capacity == pytest.approx(0.4)
    state = CapacitySearch(0.1, target=0.9, tolerance=0.05)
    for rate, share in probes:
        state.record(rate, share, limited=rate >= 0.4)
    assert state.limited and not state.bracketed and state.next_rate() is None


def test_a_failed_probe_that_ran_out_still_fails() -> None:
    capacity, probes = search(step(0.31), 0.1, target=0.9, tolerance=0.05, limit=0.4)
    assert capacity == pytest.approx(0.3)  # 0.1 0.2 served, 0.4 failed (limited): bisect
    state = CapacitySearch(0.1, target=0.9, tolerance=0.05)
    for rate, share in probes:
        state.record(rate, share, limited=rate >= 0.4)
    assert state.bracketed and not state.limited


def test_a_probe_offers_what_arrives_within_the_window() -> None:
    from saga.bench.capacity import offered

    pool = pair(0) + pair(1) + pair(2)  # 6 workflows
    gaps = np.random.default_rng(5).exponential(1 / 0.5, 5)
    arrivals = [0.0, *np.cumsum(gaps).tolist()]
    window = (arrivals[3] + arrivals[4]) / 2
    kept, ran_out = offered(pool, 0.5, 5, window)
    assert [w.arrival for w in kept] == arrivals[:4] and not ran_out
    everything, ran_out = offered(pool, 0.5, 5, arrivals[5] + 1)
    assert len(everything) == 6 and ran_out
    _, ran_out = offered(pool, 0.5, 5, math.inf)
    assert not ran_out  # no window: the pool is the offer


def test_workflows_arriving_in_the_warmup_are_not_judged() -> None:
    from saga.bench.capacity import ProbeJob, probe
    from saga.bench.workloads import retime

    cluster = serial_replica()
    workflows = pair(0)
    alone = isolated_tcts(cluster, workflows)
    rate = 2 * threshold(0, alone["s0w0"])  # the second workflow misses

    def met_judged(warmup: float) -> tuple[int, int]:
        timed = retime(workflows, rate, 0)
        out = probe(ProbeJob(cluster, "vllm-rr", [(0, timed)], {0: alone}, SLOWDOWN, warmup,
                             0.9, early=False))[0]
        assert out.state == "ran"
        return out.met, out.judged

    assert met_judged(0.0) == (1, 2)
    second = retime(workflows, rate, 0)[1].arrival
    assert met_judged(second) == (0, 1)  # only the second, which missed
    assert met_judged(second / 2) == (0, 1)


def test_median_alone_pools_the_seeds() -> None:
    from saga.bench.capacity import median_alone

    isolated = {0: {"a": 10.0, "b": 30.0}, 1: {"c": 20.0, "d": 20.0, "e": 50.0, "f": 40.0}}
    assert median_alone(isolated) == 30.0  # of 10, 20, 20, 30, 40, 50: the upper middle


def test_searches_run_apart_but_report_in_rounds() -> None:
    """Each policy's search moves on as its own probe comes in (two workers here); the
    points still read as lockstep rounds: every policy's first probe, then its second..."""
    cluster = serial_replica()
    per_seed = {0: pair(0), 1: pair(1)}
    policies = ["vllm-rr", "vllm-least-loaded"]
    kwargs = dict(start=1.0, slowdown=SLOWDOWN, target=0.9, tolerance=0.05, window_tcts=None,
                  warmup_tcts=0.0, say=lambda _: None)
    with ThreadPoolExecutor(2) as pool:
        both = capacity_on(cluster, per_seed, policies, pool=pool, **kwargs)  # type: ignore[arg-type]
        alone = {
            p: capacity_on(cluster, per_seed, [p], pool=pool, **kwargs)  # type: ignore[arg-type]
            for p in policies
        }
    for p in policies:
        assert [q.rate for q in both.points if q.policy == p] == [q.rate for q in alone[p].points]
        assert both.capacity[p] == alone[p].capacity[p]
    rounds = [(sum(1 for q in both.points[:i] if q.policy == point.policy),
               policies.index(point.policy)) for i, point in enumerate(both.points)]
    assert rounds == sorted(rounds)  # round by round, in the policies' order
    assert len(both.points) > len(policies)


def _online_baselines() -> set[str]:
    """Every registered online baseline with no service levels of its own (the capacity
    workloads have none: a ``+priority`` variant orders as its base there)."""
    from saga.sched.registry import build_policy, list_policies

    # test modules register policies of their own ("test-...") when they are collected
    return {name for name in list_policies()
            if not name.startswith(("saga", "test-")) and "+" not in name
            and not type(build_policy(name)).offline}


def test_the_full_capacity_search_takes_every_baseline_alone_and_gated() -> None:
    """The headline's best other baseline is taken over every online baseline, alone
    and behind SAGA's memory gate (issue 15), and the strongest with SAGA's decode guard."""
    from saga.bench.scenario import load_scenario

    scenario = load_scenario("capacity")
    bases = _online_baselines()
    assert {"llm-d", "dynamo", "sglang", "vllm-affinity"} <= bases
    guarded = {"sglang+guard", "infercept+guard", "kvflow+guard"}
    assert set(scenario.policies) == {"saga"} | bases | {b + "+gate" for b in bases} | guarded


def test_the_quick_capacity_search_takes_llmd_dynamo_and_the_gated_routers() -> None:
    from saga.bench.scenario import load_scenario

    quick = set(load_scenario("capacity").quick_version().policies)
    assert {"saga", "vllm-affinity", "sglang", "llm-d", "dynamo", "infercept", "kvflow",
            "sglang+gate", "vllm-affinity+gate", "vllm-least-loaded+gate", "throughput+gate",
            "llm-d+gate", "dynamo+gate", "sglang+guard", "sglang+gate+guard"} == quick


def test_workloads_searched_together_find_what_each_finds_alone() -> None:
    """run_searches shares the pool between workloads: every case's points and capacities
    are those of its search alone."""
    from saga.bench.capacity import CaseSearches, run_searches

    cluster = serial_replica()
    kwargs = dict(start=1.0, slowdown=SLOWDOWN, target=0.9, tolerance=0.05, window_tcts=None,
                  warmup_tcts=0.0, say=lambda _: None)
    seeds = [{0: pair(0), 1: pair(1)}, {2: pair(2)}]
    policies = ["vllm-rr", "vllm-least-loaded"]
    with ThreadPoolExecutor(2) as pool:
        together = run_searches(
            [CaseSearches(cluster, s, policies, **kwargs) for s in seeds], pool  # type: ignore[arg-type]
        )
        alone = [run_searches([CaseSearches(cluster, s, policies, **kwargs)], pool)[0]  # type: ignore[arg-type]
                 for s in seeds]
    assert len(together) == 2
    for both, single in zip(together, alone, strict=True):
        assert both.points == single.points and both.capacity == single.capacity
        assert both.seeds == single.seeds
    assert together[0].capacity != together[1].capacity  # two different answers


def test_the_quick_coding_pool_outlasts_the_window_of_every_probe() -> None:
    """No probe of the quick coding search runs out of workflows on seeds 0 and 1: every
    policy's quick capacity lies between the start's first and second doubling (0.02-0.04
    wf/s, docs/RESULTS.md), so no search probes above the second; the pool covers it, with
    the window (8 median TCTs alone) taken over either seed alone and over both."""
    from saga.bench.capacity import BRACKET_FACTOR, median_alone, offered, start_rate
    from saga.bench.scenario import load_scenario
    from saga.bench.workloads import build_spec

    quick = load_scenario("capacity").quick_version()
    coding = next(w for w in quick.workloads if w.label == "coding")
    cluster = quick.cluster_for(coding)
    assert quick.capacity_window is not None
    highest = start_rate(quick, coding) * BRACKET_FACTOR**2
    assert highest == pytest.approx(0.04)
    context = cluster.cost_model().model.max_context
    pools = {seed: build_spec(coding, seed, {}, context)[0] for seed in (0, 1)}
    alone = {seed: isolated_tcts(cluster, pools[seed]) for seed in pools}
    for seeds in ((0,), (1,), (0, 1)):
        window = quick.capacity_window * median_alone({s: alone[s] for s in seeds})
        for seed in seeds:
            kept, ran_out = offered(pools[seed], highest, seed, window)
            assert not ran_out, (seeds, seed, len(kept))


def test_the_probe_queue_runs_the_costliest_first_and_keeps_the_workers_busy() -> None:
    """At most ``width`` probes in flight; the ready ones go costliest first (unknown cost,
    infinite, first), ties in the order added."""
    from concurrent.futures import Executor, Future

    from saga.bench.capacity import ProbeJob, ProbeQueue, pool_width

    class Recording(Executor):
        def __init__(self) -> None:
            self.jobs: list[str] = []

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.jobs.append(args[0].policy)
            return Future()

    pool = Recording()
    queue = ProbeQueue(pool, 2)
    cluster = serial_replica()
    for policy, cost in (("a", 1.0), ("b", 5.0), ("c", math.inf), ("d", 5.0), ("e", 0.5)):
        job = ProbeJob(cluster, policy, [], {}, SLOWDOWN, 0.0, 0.9)
        queue.add(cost, job, (None, policy, 0.1, False, 0))  # type: ignore[arg-type]
    queue.fill()
    assert pool.jobs == ["c", "b"]
    queue.fill()  # still two in flight: nothing more
    assert pool.jobs == ["c", "b"]
    queue.running.pop(next(iter(queue.running)))
    queue.fill()
    assert pool.jobs == ["c", "b", "d"]
    queue.running.clear()
    queue.fill()
    assert pool.jobs == ["c", "b", "d", "a", "e"]
    with ThreadPoolExecutor(3) as threads:
        assert pool_width(threads) == 3
