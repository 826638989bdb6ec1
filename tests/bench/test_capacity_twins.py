"""A gated twin's probe stands for its base policy's where the gate held nobody: exactly.

A ``NAME+gate`` run whose gate deferred no admission is ``NAME``'s run, event for event
(:func:`saga.bench.capacity.twin_of`); the capacity search then takes the twin's probe for
``NAME``'s at that rate instead of simulating it again, and runs ``NAME``'s own wherever the
gate held someone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.bench.test_capacity import pair

from saga.bench.capacity import (
    SeedOutcome,
    capacity_on,
    held_nobody,
    twin_of,
)
from saga.bench.scenario import WorkloadSpec
from saga.bench.workloads import build_spec
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.sched.gated import GatedPolicy
from saga.sched.registry import build_policy, list_policies
from saga.sim.simulator import Simulation

BT = 16
SLOWDOWN = 1.5


def _gated_bases() -> list[str]:
    """Every registered policy with a ``+gate`` twin (test modules register their own)."""
    names = set(list_policies())
    return sorted(n for n in names if n + "+gate" in names and not n.startswith("test-"))


def test_twin_of_pairs_a_policy_with_its_gated_twin_when_both_are_searched() -> None:
    searched = ["saga", "sglang", "sglang+gate", "llm-d+gate", "dynamo"]
    assert twin_of("sglang", searched) == "sglang+gate"
    assert twin_of("sglang+gate", searched) is None  # a twin has no twin
    assert twin_of("llm-d+gate", searched) is None
    assert twin_of("dynamo", searched) is None  # dynamo+gate not searched
    assert twin_of("saga", searched) is None


def test_held_nobody_reads_the_seeds_that_ran() -> None:
    ran = SeedOutcome(3, 4, "ran", gate_holds=0)
    stopped = SeedOutcome(3, 4, "stopped", gate_holds=0)
    skipped = SeedOutcome(0, 4, "skipped")  # never ran: no holds known, none needed
    assert held_nobody({0: ran, 1: stopped, 2: skipped})
    assert not held_nobody({0: ran, 1: SeedOutcome(3, 4, "ran", gate_holds=1)})
    assert not held_nobody({0: SeedOutcome(3, 4, "ran")})  # not a gated run


def _coding(cluster: ClusterSpec, rate: str) -> list[Workflow]:
    spec = WorkloadSpec(name="coding-agent", params={
        "count": "12", "max_calls": "8", "rate": rate, "max_prompt_tokens": "20000"})
    return build_spec(spec, 0, {}, cluster.cost_model().model.max_context)[0]


@pytest.mark.parametrize("base", _gated_bases())
def test_a_gated_run_that_held_nobody_is_its_base_policys_run(base: str) -> None:
    """On 8 replicas of an 8B model the gate's working-set bound is never reached: the
    gated run's records (every workflow, call and replica) are the base policy's."""
    cluster = get_cluster("h100-8-8b")
    workflows = _coding(cluster, "0.02")
    alone = Simulation(cluster, build_policy(base), workflows, seed=0).run()
    gated = build_policy(base + "+gate")
    assert isinstance(gated, GatedPolicy)
    behind = Simulation(cluster, gated, workflows, seed=0).run()
    assert gated.gate_holds == 0
    assert behind.workflows == alone.workflows
    assert behind.calls == alone.calls
    assert behind.replicas == alone.replicas
    assert (behind.events, behind.end) == (alone.events, alone.end)


def test_the_gate_counts_its_holds() -> None:
    """On two replicas of 512 blocks the same workflows overflow the bound: the gate defers
    admissions, counted, and the workflows it held started after their arrival."""
    cluster = get_cluster("test-2")
    workflows = _coding(cluster, "0.2")
    gated = build_policy("vllm-affinity+gate")
    assert isinstance(gated, GatedPolicy)
    result = Simulation(cluster, gated, workflows, seed=0).run()
    assert gated.gate_holds > 0
    assert any(w.started_at > w.arrival for w in result.workflows)


# ---- the search takes the twin's probe where it held nobody, and only there ---------------
def tight_serial_replica() -> ClusterSpec:
    """One replica, one call at a time, KV for one call: the gate holds the second workflow
    while the first runs, and holds nobody when it arrives after the first has finished."""
    base = get_cluster("test-2")
    engine = base.engine.model_copy(update={"max_num_seqs": 1, "kv_capacity_blocks": 60})
    return base.model_copy(update={"replicas": 1, "engine": engine})




def test_the_search_of_a_policy_and_its_twin_finds_what_each_finds_alone() -> None:
    """From a low start the searches grow through rates where the second workflow arrives
    long after the first (the gate holds nobody: vllm-rr takes the twin's probe) to rates
    where it arrives while the first is still counted (held: vllm-rr runs its own)."""
    cluster = tight_serial_replica()
    per_seed = {0: pair(0), 1: pair(1)}
    kwargs = dict(start=0.01, slowdown=SLOWDOWN, target=0.9, tolerance=0.05, window_tcts=None,
                  warmup_tcts=0.0, say=lambda _: None)
    with ThreadPoolExecutor(2) as pool:
        both = capacity_on(cluster, per_seed, ["vllm-rr", "vllm-rr+gate"], pool=pool,
                           **kwargs)  # type: ignore[arg-type]
        alone = {p: capacity_on(cluster, per_seed, [p], pool=pool, **kwargs)  # type: ignore[arg-type]
                 for p in ("vllm-rr", "vllm-rr+gate")}
    for policy, single in alone.items():
        mine = [p for p in both.points if p.policy == policy]
        assert [(p.rate, p.attainment, p.served, p.per_seed, p.judged, p.offered, p.limited,
                 p.stopped) for p in mine] == [
            (p.rate, p.attainment, p.served, p.per_seed, p.judged, p.offered, p.limited,
             p.stopped) for p in single.points]
        assert both.capacity[policy] == single.capacity[policy]
    taken = [p for p in both.points if p.policy == "vllm-rr" and p.twin]
    own = [p for p in both.points if p.policy == "vllm-rr" and not p.twin]
    assert taken and own  # both paths
    assert {p.twin for p in taken} == {"vllm-rr+gate"}
    assert max(p.rate for p in taken) < min(p.rate for p in own)
    assert not any(p.twin for p in both.points if p.policy == "vllm-rr+gate")
