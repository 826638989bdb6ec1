"""SLO admission: best effort deferred first, interactive queued then rejected."""

from __future__ import annotations

import pytest

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.engine.replica import Replica, Request
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.saga.admission import SlowdownTracker, decide
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy
from saga.sim.simulator import Simulation

CFG = SagaConfig(defer_best_effort_at=0.8, max_queue=30.0, retry_after=2.0)


def _wf(slo: float | None, arrival: float = 0.0) -> WorkflowInfo:
    return WorkflowInfo("w", "t", "agent", arrival, slo)


def test_admit_everything_without_interactive_work() -> None:
    assert decide(_wf(None), 0.0, 50.0, [], CFG).verdict == "admit"


def test_best_effort_is_deferred_first() -> None:
    # tightest SLO 3.0: best effort deferred from 0.8 x 3 = 2.4, interactive only past 3.0
    be = decide(_wf(None), 0.0, 2.5, [3.0], CFG)
    inter = decide(_wf(3.0), 0.0, 2.5, [3.0], CFG)
    assert be.verdict == "defer" and be.retry_after == 2.0
    assert "best effort deferred" in be.reason and "2.50" in be.reason
    assert inter.verdict == "admit"
    assert decide(_wf(None), 0.0, 2.3, [3.0], CFG).verdict == "admit"


def test_best_effort_is_not_starved() -> None:
    cfg = SagaConfig(max_defer_best_effort=60.0)
    assert decide(_wf(None, arrival=0.0), 59.0, 10.0, [3.0], cfg).verdict == "defer"
    assert decide(_wf(None, arrival=0.0), 60.0, 10.0, [3.0], cfg).verdict == "admit"


def test_interactive_is_queued_then_rejected_with_a_reason() -> None:
    queued = decide(_wf(3.0, arrival=0.0), 10.0, 4.0, [], CFG)
    assert queued.verdict == "defer"
    assert queued.reason == "queued: predicted slowdown 4.00 exceeds the SLO 3"
    rejected = decide(_wf(3.0, arrival=0.0), 30.0, 4.0, [], CFG)
    assert rejected.verdict == "reject"
    assert rejected.reason == (
        "rejected: predicted slowdown 4.00 exceeds the SLO 3 after 30 s in the admission queue"
    )


def test_slowdown_tracker_decays_with_half_life() -> None:
    tr = SlowdownTracker(halflife=10.0)
    assert tr.value(0.0) == 1.0
    tr.add(4.0, 0.0)
    tr.add(2.0, 10.0)  # the first sample now weighs 1/2
    assert tr.value(10.0) == pytest.approx((4.0 * 0.5 + 2.0) / 1.5)


def _saga_on_small_cluster(afs: bool = True) -> tuple[SagaPolicy, list[Replica]]:
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    policy = SagaPolicy(SagaConfig(afs=afs, memory_gate=False))
    sim = Simulation(get_cluster("test-2"), policy, [dummy])
    return policy, sim.replicas


def _call(workflow: str, tenant: str, slo: float | None, prompt: int) -> CallInfo:
    return CallInfo(
        workflow=workflow, tenant=tenant, agent="agent", call_id="c0", index=0, tool=None,
        prompt_tokens=prompt, runs=((f"w:{workflow}", 0, prompt // 16),), issued_at=0.0,
        workflow_arrival=0.0, slo=slo, ends_workflow=True,
    )


def _flood(replicas: list[Replica], calls: int, prompt: int) -> None:
    """Queue ``calls`` best-effort prompts on every replica (a batch tenant's flood)."""
    for replica in replicas:
        for k in range(calls):
            info = _call(f"batch-{replica.index}-{k}", "batch", None, prompt)
            replica.enqueue(
                Request(info.workflow, "c0", info.runs, prompt, 16, 16, k, info=info), 0.0
            )


def test_a_best_effort_flood_does_not_turn_interactive_work_away() -> None:
    # Under AFS the flood is served after interactive work: admission must not count it.
    policy, replicas = _saga_on_small_cluster()
    _flood(replicas, calls=200, prompt=32_000)
    assert policy._queue_slowdown(interactive=False) > 10.0  # the flood is real
    assert policy.admit(WorkflowInfo("i", "web", "agent", 0.0, 3.0), 0.0).verdict == "admit"


def test_without_afs_the_flood_is_ahead_and_interactive_work_is_queued() -> None:
    policy, replicas = _saga_on_small_cluster(afs=False)
    _flood(replicas, calls=200, prompt=32_000)
    verdict = policy.admit(WorkflowInfo("i", "web", "agent", 0.0, 3.0), 0.0)
    assert verdict.verdict == "defer" and verdict.reason.startswith("queued: predicted")


def test_only_interactive_calls_feed_the_slowdown_prediction() -> None:
    policy, _ = _saga_on_small_cluster()
    for name, slo in (("batch-1", None), ("web-1", 3.0)):
        policy.admit(WorkflowInfo(name, name.split("-")[0], "agent", 0.0, slo), 0.0)
        info = _call(name, name.split("-")[0], slo, 1_000)
        policy.on_call_ready(info, 0.0)
        policy.place(info, 0.0)
        # a best-effort call 100 s late, an interactive one on time
        policy.on_call_finished(info, 0, 100.0 if slo is None else 0.01)
    assert policy.slowdowns.value(100.0) < 2.0


def test_withdrawing_a_deferred_workflow_takes_it_out_of_the_gate() -> None:
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    policy = SagaPolicy(SagaConfig(memory_budget=1e-6))
    Simulation(get_cluster("test-2"), policy, [dummy])
    first, second, third = (WorkflowInfo(n, "t", "agent", 0.0, None) for n in "abc")
    assert policy.admit(first, 0.0).verdict == "admit"  # an empty cluster admits
    assert policy.admit(second, 0.0).verdict == "defer"
    assert policy.admit(third, 0.0).verdict == "defer"
    policy.on_admission_withdrawn(second, 1.0)
    assert list(policy.gate.waiting) == ["c"]


def test_under_afs_slow_interactive_calls_defer_best_effort_not_new_interactive_work() -> None:
    """Interactive calls slowed by a flood: queueing a new interactive workflow would not
    speed them (AFS serves it ahead of the flood), deferring the flood does. Without AFS the
    observed slowdown queues interactive work too."""
    for afs, interactive in ((True, "admit"), (False, "defer")):
        policy, _ = _saga_on_small_cluster(afs=afs)
        assert policy.admit(WorkflowInfo("web-0", "web", "agent", 0.0, 3.0), 0.0).verdict == "admit"
        policy.slowdowns.add(5.0, 0.0)
        verdict = policy.admit(WorkflowInfo("web-1", "web", "agent", 0.0, 3.0), 0.0)
        assert verdict.verdict == interactive
        best_effort = policy.admit(WorkflowInfo("batch-0", "batch", "agent", 0.0, None), 0.0)
        assert best_effort.verdict == "defer"
        assert best_effort.reason == (
            "best effort deferred: predicted slowdown 5.00 >= 1.50 (0.5 x interactive SLO 3)"
        )
