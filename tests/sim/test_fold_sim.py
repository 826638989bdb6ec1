"""Whole simulations with and without folded block boundaries (saga.engine.fold): every
figure but the count of events is the same, under policies that read the replicas
(through SyncedReplica) and one that does not."""

from __future__ import annotations

from unittest.mock import patch

import pytest

from saga.engine.cluster import get_cluster
from saga.sim.run import run_policy
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
