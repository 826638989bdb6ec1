"""Whole simulations with and without folded block boundaries (saga.engine.fold) and
folded mixed steps (saga.engine.mixed_fold): every figure but the count of events is the
same, under policies that read the replicas (through SyncedReplica) and one that does not."""

from __future__ import annotations

import json
import random
from unittest.mock import patch

import pytest
from tests.engine.test_fold import Driver
from tests.engine.test_replica import Hooks, make_replica, request

from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.engine.events import EventLoop
from saga.engine.replica import Replica
from saga.sim.run import RunOutput, run_policy
from saga.sim.synced import SyncedReplica
from saga.workloads import build_workload


@pytest.mark.pure_python
@pytest.mark.parametrize("policy", ["vllm-affinity", "vllm-least-loaded", "sglang", "dynamo"])
def test_folding_changes_no_figure_but_the_events(policy: str) -> None:
    cluster = get_cluster("small")
    workflows = build_workload("agents", seed=3, params={}).workflows
    folded = run_policy(cluster, policy, workflows, seed=4, kv_sample_interval=5.0)
    with (
        patch("saga.engine.replica.fold_boundaries", lambda *args: []),
        patch("saga.engine.replica.fold_mixed_steps", lambda *args: []),
    ):
        stepped = run_policy(cluster, policy, workflows, seed=4, kv_sample_interval=5.0)
    assert folded.result.events < stepped.result.events  # it folded something
    assert folded.result.calls == stepped.result.calls
    assert folded.result.replicas == stepped.result.replicas
    assert folded.result.kv_timeline == stepped.result.kv_timeline
    events = "events"
    assert {k: v for k, v in folded.summary.items() if k != events} == {
        k: v for k, v in stepped.summary.items() if k != events
    }


def test_the_simulators_view_syncs_a_folded_replica_before_a_read() -> None:
    """SyncedReplica (what the simulator's policy reads) applies the boundaries passed."""
    replica = make_replica(capacity=30, budget=4096, hooks=Hooks())
    replica.fold_boundaries = True
    loop = EventLoop()
    driver = Driver(loop, replica)
    for i in range(3):  # cached, evictable prompts: the decodes below evict them
        replica.enqueue(request(f"warm{i}", 6, 1, seq=i, extra_tokens=5), 0.0)
    driver._kick(replica)
    loop.run()
    replica.enqueue(request("a", 5, 300, seq=10), loop.now)
    replica.enqueue(request("b", 4, 260, seq=11), loop.now)
    driver._kick(replica)
    view = SyncedReplica(replica, loop)
    synced: list[int] = []

    def read(_: object) -> None:
        if replica._folded and replica.step_end < loop.now:
            before = len(replica._folded)
            assert view.context_tokens == replica.context_tokens
            synced.append(before - len(replica._folded))

    for k in range(1, 400):
        loop.at(loop.now + k * 0.01, read)
    loop.run()
    assert synced and all(n > 0 for n in synced)


def _folded_and_stepped(
    cluster: ClusterSpec, policy: str, workflows: list[Workflow], seed: int
) -> tuple[RunOutput, RunOutput, int, int]:
    """The run with folding, the run stepped one boundary and one step at a time, how
    many folded runs of two or more calls the first planned, and how many folds of mixed
    steps beside two or more decodes."""
    multi = mixed = 0
    plan = Replica.plan

    def counting_plan(replica: Replica, now: float) -> float | None:
        nonlocal multi, mixed
        end = plan(replica, now)
        if replica._folded and len(replica._fold_calls) > 1:
            multi += 1
        if replica._mixed and len(replica.running) > 2:
            mixed += 1
        return end

    with patch.object(Replica, "plan", counting_plan):
        folded = run_policy(cluster, policy, workflows, seed=seed, kv_sample_interval=5.0)
    with (
        patch("saga.engine.replica.fold_boundaries", lambda *args: []),
        patch("saga.engine.replica.fold_mixed_steps", lambda *args: []),
    ):
        stepped = run_policy(cluster, policy, workflows, seed=seed, kv_sample_interval=5.0)
    return folded, stepped, multi, mixed


def _assert_same_but_events(folded: RunOutput, stepped: RunOutput) -> None:
    assert folded.result.events < stepped.result.events  # it folded something
    assert folded.result.calls == stepped.result.calls  # every call's instants, exactly
    assert folded.result.workflows == stepped.result.workflows
    assert folded.result.replicas == stepped.result.replicas
    assert folded.result.kv_timeline == stepped.result.kv_timeline
    def rest(summary: dict[str, object]) -> str:  # as JSON: a NaN (no SLO) equals itself
        return json.dumps({k: v for k, v in summary.items() if k != "events"}, sort_keys=True)

    assert rest(folded.summary) == rest(stepped.summary)


@pytest.mark.pure_python
@pytest.mark.parametrize("policy", ["saga", "belady", "kvflow", "kvflow+gate", "saga-no-afs"])
def test_keyed_orders_fold_under_the_hook_barrier_and_change_no_figure(policy: str) -> None:
    """A keyed eviction order (and saga's dynamic queue order) folds only because every
    folded boundary is applied before the policy's next hook (sim/fold_barrier.py)."""
    cluster = get_cluster("small")
    workflows = build_workload("agents", seed=3, params={}).workflows
    folded, stepped, _, _ = _folded_and_stepped(cluster, policy, workflows, 4)
    _assert_same_but_events(folded, stepped)


@pytest.mark.pure_python
@pytest.mark.parametrize("case", range(6))
def test_saga_folded_equals_stepped_on_random_small_clusters(case: int) -> None:
    """Random small clusters under memory pressure (replicas, KV blocks, batch limits,
    workload and seeds drawn from ``case``): folded and stepped give the same instants
    for every call; folded runs of several calls (the dynamic order re-sorted at each
    boundary) happen in the draw."""
    rng = random.Random(case)
    base = get_cluster("small")
    engine = base.engine.model_copy(update={
        "kv_capacity_blocks": rng.choice([256, 512, 1024, 2048]),
        "max_num_seqs": rng.choice([8, 16, 64]),
        "max_num_batched_tokens": rng.choice([2048, 4096, 8192]),
    })
    cluster = base.model_copy(update={"replicas": rng.choice([1, 2, 3]), "engine": engine})
    name = rng.choice(["agents", "browser-agent"])
    params = {"count": str(rng.choice([20, 40]))} if name == "browser-agent" else {}
    workflows = build_workload(name, seed=rng.randrange(100), params=params).workflows
    folded, stepped, multi, _ = _folded_and_stepped(
        cluster, "saga", workflows, rng.randrange(100)
    )
    _assert_same_but_events(folded, stepped)
    assert multi > 0


GUARDED = ["saga", "sglang+guard", "kvflow+guard", "vllm-affinity+guard", "dynamo+guard"]


@pytest.mark.pure_python
@pytest.mark.parametrize("case", range(10))
def test_guarded_folded_equals_stepped_on_random_clusters(case: int) -> None:
    """The decode guard's mixed steps (a capped prefill chunk beside decodes) fold into one
    event (saga.engine.mixed_fold): on random clusters (replicas, KV blocks, batch limits,
    workload and seeds drawn from ``case``), under saga and guarded baselines (static and
    keyed eviction orders, static and dynamic queue orders), folded and stepped give the
    same instants for every call and the same records; mixed folds beside several decodes
    happen in the draw."""
    rng = random.Random(1000 + case)
    base = get_cluster("small")
    engine = base.engine.model_copy(update={
        "kv_capacity_blocks": rng.choice([512, 1024, 2048, 4096]),
        "max_num_seqs": rng.choice([8, 16, 64]),
        "max_num_batched_tokens": rng.choice([1024, 2048, 4096]),
    })
    cluster = base.model_copy(update={"replicas": rng.choice([1, 2, 3]), "engine": engine})
    name = rng.choice(["agents", "browser-agent"])
    params = {"count": str(rng.choice([20, 40]))} if name == "browser-agent" else {}
    workflows = build_workload(name, seed=rng.randrange(100), params=params).workflows
    policy = GUARDED[case % len(GUARDED)]
    folded, stepped, _, mixed = _folded_and_stepped(cluster, policy, workflows, rng.randrange(100))
    _assert_same_but_events(folded, stepped)
    assert mixed > 0
