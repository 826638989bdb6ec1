"""A simulated run in the shape of a real one, and the placement figures of both
(saga.bench.real_vs_sim)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from saga.bench.real_decompose import decompose
from saga.bench.real_vs_sim import Placements, placements, send_lag, sim_record
from saga.sim.simulator import CallRecord, WorkflowRecord


def _call(wf: str, replica: int, ready: float, end: float, prompt: int, cached: int) -> CallRecord:
    return CallRecord(wf, f"{wf}:{ready}", replica, ready, ready, ready, end, prompt, cached,
                      0, 0, 8, 0)


def test_a_simulated_run_reads_as_a_real_one() -> None:
    a = WorkflowRecord("default/s000", "default", "agent", 0.0, 2.0, 5.0, 2, None)
    b = WorkflowRecord("default/s001", "default", "agent", 0.25, 0.25, 3.25, 2, None)
    calls = [  # the second call of a first in the list: sorted by readiness
        _call("default/s000", 1, 4.0, 5.0, 1200, 1100),
        _call("default/s000", 0, 2.0, 3.5, 1000, 0),
        _call("default/s001", 1, 0.25, 1.25, 800, 0),
        _call("default/s001", 1, 1.5, 3.25, 900, 100)]
    run = sim_record(SimpleNamespace(workflows=[a, b], calls=calls), "saga", 2)
    assert run["tct"] == {"s000": 5.0, "s001": 3.0} and run["deferred"] == {"s000": 2.0}
    assert run["call_log"][:2] == [["s000", 0, 0.0, 3.5, 0, 200, 1000, 0],
                                   ["s000", 1, 4.0, 1.0, 1, 200, 1200, 1100]]
    (d,) = decompose([run])
    assert d.held == 1.0 and d.served == pytest.approx((4.5 - 2.0 + 2.75) / 2)
    # s000 moved to replica 1 (100 tokens prefilled there); s001 stayed and missed
    assert placements(run) == Placements(moved=1, moved_uncached=100, home_missed=1)
    assert send_lag(run, 0.25) == (0.0, 0)


def test_a_late_first_send_is_counted() -> None:
    run = {"call_log": [["s000", 0, 0.01, 1.0, 0, 200, 1, 0], ["s009", 0, 4.2, 1.0, 0, 200, 1, 0],
                        ["s009", 1, 5.3, 1.0, 0, 200, 1, 0], ["s004", 0, 1.1, 1.0, 0, 200, 1, 0]]}
    lag, late = send_lag(run, 0.25)
    assert lag == pytest.approx(4.2 - 2.25) and late == 1
