"""Replica failures in the simulator: every policy completes every workflow, nothing leaks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.engine.replica import Request
from saga.sched.registry import build_policy, list_policies
from saga.sim.faults import Fault, check_faults
from saga.sim.simulator import SimResult, Simulation

BT = 64


def _workflows(count: int = 12) -> list[Workflow]:
    out = []
    for w in range(count):
        calls = []
        blocks = 10 + w
        for i in range(4):
            blocks += 8
            calls.append(Call(
                id=f"c{i}", prompt=Prompt(blocks * BT + 30, (("sys", 200),), ((0, blocks),)),
                output_tokens=60 + 20 * (w % 3), after=(f"c{i - 1}",) if i else (),
                gap=1.5 if i else 0.0, tool="bash" if i else None,
            ))
        out.append(Workflow(f"w{w}", f"t{w % 2}", "agent", 0.4 * w, tuple(calls)))
    return out


# one replica down mid-run, then both down at once (calls wait), then a late one
FAULTS = [Fault(replica=0, at=2.0, duration=3.0), Fault(replica=1, at=3.0, duration=4.0),
          Fault(replica=2, at=9.0, duration=1.0)]


def _simulate(policy: str, faults: list[Fault]) -> tuple[Simulation, SimResult]:
    cluster = get_cluster("test-2").model_copy(update={"replicas": 3})
    sim = Simulation(cluster, build_policy(policy), _workflows(), seed=3, faults=faults)
    return sim, sim.run()


@pytest.mark.parametrize("policy", list_policies())
def test_every_policy_completes_every_workflow_under_faults(policy: str) -> None:
    wfs = _workflows()
    sim, result = _simulate(policy, FAULTS)
    done = [w for w in result.workflows if not w.rejected]
    assert len(result.workflows) == len(wfs)
    assert all(w.finished_at >= w.arrival for w in done)
    # every call answered exactly once, with exactly its output
    served = sorted((c.workflow, c.call_id) for c in result.calls)
    expected = sorted((w.id, c.id) for w in wfs for c in w.calls
                      if any(d.workflow == w.id for d in done))
    assert served == expected
    assert sum(c.output_tokens for c in result.calls) == sum(
        w.total_output_tokens() for w in wfs if any(d.workflow == w.id for d in done))
    for replica in sim.replicas:
        assert replica.up
        replica.kv.check()
        assert replica.kv.locked_blocks == 0 and replica.kv.anonymous_blocks == 0
        assert not replica.running and not replica.waiting and not replica.pins
    assert not sim._parked


def test_faults_move_work_and_cost_recompute() -> None:
    calm = _simulate("vllm-least-loaded", [])[1]
    hit = _simulate("vllm-least-loaded", FAULTS)[1]
    assert sum(c.recomputed_tokens for c in hit.calls) > sum(
        c.recomputed_tokens for c in calm.calls)
    # nothing is served by a replica while it is down
    for call in hit.calls:
        for f in FAULTS:
            if call.replica == f.replica:
                assert not f.at < call.finished_at < f.until, (call, f)
    # same seed, same faults: same result
    again = _simulate("vllm-least-loaded", FAULTS)[1]
    assert [(c.call_id, c.finished_at) for c in again.calls] == [
        (c.call_id, c.finished_at) for c in hit.calls]


def test_replica_fail_releases_everything_and_returns_what_it_held() -> None:
    cluster = get_cluster("test-2")
    sim = Simulation(cluster, build_policy("vllm-rr"), _workflows(1))
    replica = sim.replicas[0]
    requests = [Request("w", f"c{i}", (("w:w", 0, 20 + i),), 20 * BT + 64 * i, 50, BT, i + 1)
                for i in range(3)]
    for r in requests:
        replica.enqueue(r, 0.0)
    end = replica.plan(0.0)
    assert end is not None and replica.running and replica.kv.used_blocks > 0
    held = replica.fail(end / 2)
    assert [r.seq for r in held] == [1, 2, 3]
    assert all(r.computed == 0 and r.generated == 0 and r.lock is None and r.anon == 0
               for r in held)
    assert not replica.up and not replica.busy
    assert replica.plan(end) is None  # a down replica plans nothing
    replica.kv.check()
    assert replica.kv.used_blocks == 0 and not replica.pins


def test_fault_schedule_is_validated() -> None:
    with pytest.raises(ValidationError):
        Fault(replica=0, at=1.0, duration=0.0)
    with pytest.raises(ValidationError):
        Fault(replica=-1, at=1.0, duration=1.0)
    with pytest.raises(ValueError, match="has 2 replicas"):
        check_faults([Fault(replica=2, at=0.0, duration=1.0)], 2)
    with pytest.raises(ValueError, match="overlap"):
        check_faults([Fault(replica=0, at=0.0, duration=2.0),
                      Fault(replica=0, at=1.0, duration=1.0)], 2)
