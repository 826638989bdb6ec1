"""Whole simulations with and without folded block boundaries (saga.engine.fold): every
figure but the count of events is the same, under policies that read the replicas
(through SyncedReplica) and one that does not."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from tests.engine.test_fold import Driver
from tests.engine.test_replica import Hooks, make_replica, request

from saga.engine.cluster import get_cluster
from saga.engine.events import EventLoop
from saga.sim.run import run_policy
from saga.sim.synced import SyncedReplica
from saga.workloads import build_workload


@pytest.mark.parametrize("policy", ["vllm-affinity", "vllm-least-loaded", "sglang", "dynamo"])
def test_folding_changes_no_figure_but_the_events(policy: str) -> None:
    cluster = get_cluster("small")
    workflows = build_workload("agents", seed=3, params={}).workflows
    folded = run_policy(cluster, policy, workflows, seed=4, kv_sample_interval=5.0)
    with patch("saga.engine.replica.fold_boundaries", lambda *args: []):
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
