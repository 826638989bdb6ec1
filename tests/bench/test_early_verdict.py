"""A capacity probe stops at the first instant its failure is certain, and its verdict is
the one the full simulation gives."""

from __future__ import annotations

import math

import pytest

from saga.bench.capacity import ProbeJob, judged_of, probe
from saga.bench.early_verdict import VerdictWatch, decisive_misses, first_miss_instant
from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.engine.events import EventLoop
from saga.metrics.stationarity import met_level
from saga.sched.registry import build_policy
from saga.sim.run import isolated_tcts
from saga.sim.simulator import SimResult, Simulation

BT = 16
SLOWDOWN = 1.5


def serial_replica() -> ClusterSpec:
    """One replica that runs one call at a time: each workflow waits for those before it."""
    base = get_cluster("test-2")
    engine = base.engine.model_copy(update={"max_num_seqs": 1})
    return base.model_copy(update={"replicas": 1, "engine": engine})


def workflow(name: str, arrival: float, blocks: int = 40) -> Workflow:
    return Workflow(name, "t", "a", arrival,
                    (Call("c0", Prompt(blocks * BT, (), ((0, blocks),)), 50),), block_tokens=BT)


def queue(count: int, spacing: float) -> tuple[list[Workflow], dict[str, float]]:
    """``count`` equal workflows ``spacing`` TCTs alone apart, and their TCTs alone: on the
    serial replica workflow k finishes at (k + 1) TCTs alone, a TCT of 1 + (1 - spacing) k."""
    alone = isolated_tcts(serial_replica(), [workflow("x", 0.0)])["x"]
    workflows = [workflow(f"w{k}", k * spacing * alone) for k in range(count)]
    return workflows, {w.id: alone for w in workflows}


def miss_instants(result: SimResult, alone: dict[str, float]) -> list[float]:
    """From a full run: when each missing workflow's miss became certain, in order (its
    arrival if rejected then, else the first instant past its bound)."""
    out = []
    for record in result.workflows:
        if met_level(record, alone[record.workflow], SLOWDOWN):
            continue
        out.append(record.arrival if record.rejected else
                   first_miss_instant(record.arrival, SLOWDOWN * alone[record.workflow]))
    return sorted(out)


def test_decisive_misses_is_the_fewest_that_fail_the_target() -> None:
    assert decisive_misses(10, 0.9) == 2  # 9/10 is served (at the target), 8/10 is not
    assert decisive_misses(20, 0.9) == 3
    assert decisive_misses(4, 0.5) == 3  # 2/4 is served
    assert decisive_misses(3, 1.0) == 1
    assert decisive_misses(0, 0.9) is None
    assert decisive_misses(5, 0.0) is None


@pytest.mark.parametrize(("arrival", "bound"), [(0.1, 0.2), (1e6 + 0.3, 7.7), (0.0, 0.0),
                                                (123.456, 1e-9)])
def test_first_miss_instant_is_the_first_float_past_the_bound(arrival: float, bound: float
                                                             ) -> None:
    instant = first_miss_instant(arrival, bound)
    assert instant - arrival > bound
    assert math.nextafter(instant, -math.inf) - arrival <= bound


def test_a_probe_stops_at_the_first_instant_its_failure_is_certain() -> None:
    cluster = serial_replica()
    workflows, alone = queue(6, 0.25)  # TCTs 1, 1.75, 2.5, ... alone: only w0 meets 1.5x
    full = Simulation(cluster, build_policy("vllm-rr"), workflows).run()
    assert [met_level(r, alone[r.workflow], SLOWDOWN) for r in full.workflows] == [
        True, False, False, False, False, False]
    for limit in range(1, 6):
        watch = VerdictWatch(alone, SLOWDOWN, misses=limit, meets=None)
        stopped = Simulation(cluster, build_policy("vllm-rr"), workflows, watch=watch).run()
        # the limit-th miss of the full run, at the instant it became certain
        assert watch.halted_at == miss_instants(full, alone)[limit - 1]
        assert watch.missed == limit and watch.verdict == "failed"
        # what ran before the halt is what the full run did: the policy saw nothing new
        assert stopped.calls == full.calls[: len(stopped.calls)]
        assert all(c in stopped.calls for c in full.calls if c.finished_at < watch.halted_at)
        assert stopped.end == watch.halted_at < full.end


def test_a_probe_stops_at_the_finish_that_makes_it_served() -> None:
    cluster = serial_replica()
    workflows, alone = queue(5, 0.9)  # TCTs 1, 1.1, ..., 1.4 alone: every one meets 1.5x
    full = Simulation(cluster, build_policy("vllm-rr"), workflows).run()
    assert all(met_level(r, alone[r.workflow], SLOWDOWN) for r in full.workflows)
    for meets in range(1, 6):
        watch = VerdictWatch(alone, SLOWDOWN, misses=1, meets=meets)
        stopped = Simulation(cluster, build_policy("vllm-rr"), workflows, watch=watch).run()
        assert watch.verdict == "served" and watch.met == meets and watch.missed == 0
        assert watch.halted_at == full.workflows[meets - 1].finished_at
        assert stopped.calls == full.calls[:meets]


def test_a_late_finish_is_a_miss_never_a_meet() -> None:
    cluster = serial_replica()
    workflows, alone = queue(6, 0.25)  # only w0 meets 1.5x
    watch = VerdictWatch(alone, SLOWDOWN, misses=None, meets=2)
    Simulation(cluster, build_policy("vllm-rr"), workflows, watch=watch).run()
    assert watch.verdict == "" and watch.met == 1 and watch.halted_at is None


def test_a_workflow_finishing_at_its_bound_is_not_a_miss() -> None:
    """A level the second workflow meets with nothing to spare (1.75x, to the last bit of
    floating point): the watch's deadline falls just after its finish, and never halts."""
    cluster = serial_replica()
    workflows, alone = queue(2, 0.25)
    full = Simulation(cluster, build_policy("vllm-rr"), workflows).run()
    second = full.workflows[1]
    tct = second.finished_at - second.arrival
    bound = tct / alone["w1"]
    while bound * alone["w1"] < tct:  # the smallest slowdown the finish meets
        bound = math.nextafter(bound, math.inf)
    watch = VerdictWatch(alone, bound, misses=1, meets=None)
    Simulation(cluster, build_policy("vllm-rr"), workflows, watch=watch).run()
    assert met_level(second, alone["w1"], bound)
    assert watch.halted_at is None and watch.missed == 0


def test_a_rejected_workflow_misses_when_it_is_rejected() -> None:
    cluster = serial_replica()
    workflows, alone = queue(3, 0.25)
    huge = workflow("huge", 0.01, blocks=10 * cluster.kv_capacity_blocks(BT))  # never fits
    watch = VerdictWatch({**alone, "huge": 1.0}, SLOWDOWN, misses=1, meets=None)
    Simulation(cluster, build_policy("vllm-rr"), [*workflows, huge], watch=watch).run()
    assert watch.halted_at == 0.01


def test_an_unwatched_workflow_never_counts() -> None:
    cluster = serial_replica()
    workflows, alone = queue(6, 0.25)
    watch = VerdictWatch({"w0": alone["w0"]}, SLOWDOWN, misses=1, meets=None)  # it meets
    Simulation(cluster, build_policy("vllm-rr"), workflows, watch=watch).run()
    assert watch.halted_at is None and watch.missed == 0


def test_the_watch_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="misses"):
        VerdictWatch({}, SLOWDOWN, misses=0, meets=None)
    with pytest.raises(ValueError, match="meets"):
        VerdictWatch({}, SLOWDOWN, misses=None, meets=0)


def test_the_event_loop_halt_drops_what_is_pending() -> None:
    loop = EventLoop()
    ran: list[float] = []
    loop.at(1.0, lambda _: ran.append(loop.now))
    # what the halting event still schedules is dropped too
    loop.at(2.0, lambda _: (ran.append(loop.now), loop.halt(),
                            loop.at(2.0, lambda _: ran.append(-4.0))))
    loop.at(2.0, lambda _: ran.append(-1.0))
    loop.at_background(2.5, lambda _: ran.append(-2.0))
    loop.at(3.0, lambda _: ran.append(-3.0))
    loop.run()
    assert ran == [1.0, 2.0] and loop.halted and loop.now == 2.0
    loop.run()  # a halted loop never runs again
    assert ran == [1.0, 2.0]


# ---- the probe: seeds in order, the verdict of the full runs -----------------------------
def full_share(cluster: ClusterSpec, seeds: list[tuple[int, list[Workflow]]],
               alone: dict[str, float], warmup: float) -> float:
    met = total = 0
    for seed, workflows in seeds:
        result = Simulation(cluster, build_policy("vllm-rr"), workflows, seed=seed).run()
        judged = [r for r in result.workflows if r.arrival >= warmup]
        met += sum(met_level(r, alone[r.workflow], SLOWDOWN) for r in judged)
        total += len(judged)
    return met / total


@pytest.mark.parametrize("target", [0.2, 0.3, 0.375, 0.5, 0.6, 0.9])
def test_a_probe_gives_the_verdict_of_the_full_runs(target: float) -> None:
    cluster = serial_replica()
    first, alone = queue(4, 0.25)  # 1 of 4 meets
    second = [workflow(f"v{k}", k * 0.6 * alone["w0"]) for k in range(4)]  # 1 + 0.4k: 2 meet
    alone |= {w.id: alone["w0"] for w in second}
    seeds = [(0, first), (1, second)]
    warmup = 0.0
    share = full_share(cluster, seeds, alone, warmup)
    assert share == 3 / 8
    isolated = {0: {w.id: alone[w.id] for w in first}, 1: {w.id: alone[w.id] for w in second}}
    out = probe(ProbeJob(cluster, "vllm-rr", seeds, isolated, SLOWDOWN, warmup, target))
    met = sum(o.met for o in out.values())
    assert sum(o.judged for o in out.values()) == 8
    assert (met / 8 >= target) == (share >= target)
    decisive = decisive_misses(8, target)
    assert decisive is not None
    # seed 0 (1 meets, 3 miss) cannot decide alone but at 0.9; seed 1 stops at the meet
    # (served) or miss (failed) that decides, unless it is the last of the four anyway
    expected = {0.2: (["ran", "stopped"], 8 - decisive + 1),  # served at 2 meets
                0.3: (["ran", "stopped"], 8 - decisive + 1),  # served at 3 meets
                0.375: (["ran", "stopped"], 3),  # served at 3 meets: v1 finishes before v3
                0.5: (["ran", "stopped"], 8 - decisive),  # failed at 5 misses
                0.6: (["ran", "stopped"], 8 - decisive),  # failed at 4 misses
                0.9: (["stopped", "skipped"], 8 - decisive)}[target]  # failed at 1 miss
    assert ([o.state for o in out.values()], met) == expected
    exact = probe(ProbeJob(cluster, "vllm-rr", seeds, isolated, SLOWDOWN, warmup, target,
                           early=False))
    assert [o.state for o in exact.values()] == ["ran", "ran"]
    assert [o.met for o in exact.values()] == [1, 2]


def test_a_probe_judges_only_arrivals_after_the_warmup() -> None:
    workflows, alone = queue(4, 0.25)
    warmup = workflows[2].arrival
    assert [w.id for w in judged_of(workflows, warmup)] == ["w2", "w3"]
    out = probe(ProbeJob(serial_replica(), "vllm-rr", [(0, workflows)], {0: alone}, SLOWDOWN,
                         warmup, 0.6))
    assert out[0].judged == 2 and out[0].state == "stopped" and out[0].met == 1
