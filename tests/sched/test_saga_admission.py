"""SLO admission: best effort deferred first, interactive queued then rejected."""

from __future__ import annotations

import pytest

from saga.sched.policy import WorkflowInfo
from saga.sched.saga.admission import SlowdownTracker, decide
from saga.sched.saga.config import SagaConfig

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
