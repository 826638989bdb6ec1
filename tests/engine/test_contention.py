"""Replicas sharing a host's cores (saga.engine.contention): a step started while others
are busy takes 1 + contention x (share of the other replicas busy) times the cost model's
time, exactly; without a host share nothing changes."""

from __future__ import annotations

import pytest

from saga.engine.config import EngineConfig
from saga.engine.contention import HostShare
from saga.engine.costmodel import cost_model_for
from saga.engine.replica import Replica, Request
from saga.sched.vllm import VLLMRoundRobin

BT = 64


def replicas(n: int) -> list[Replica]:
    config = EngineConfig(max_num_batched_tokens=512, max_num_seqs=8)
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    return [Replica(i, config, cost, VLLMRoundRobin(), block_tokens=BT, capacity_blocks=64)
            for i in range(n)]


def send(replica: Replica, name: str, blocks: int = 6, output: int = 4) -> Request:
    request = Request(name, "c0", (("w:" + name, 0, blocks),), blocks * BT, output, BT, 1)
    replica.enqueue(request, 0.0)
    return request


def first_step(replica: Replica) -> float:
    """The duration of the step ``replica`` starts now (its whole 384-token prefill)."""
    end = replica.plan(0.0)
    assert end is not None
    return end - replica.step_start


def test_slowdown_counts_the_share_of_other_replicas_busy() -> None:
    class Busy:
        def __init__(self, stepping: bool) -> None:
            self.stepping = stepping

    me, on, off = Busy(True), Busy(True), Busy(False)
    assert HostShare([me, on], 0.3).slowdown(me) == 1.3
    assert HostShare([me, off], 0.3).slowdown(me) == 1.0
    assert HostShare([me, on, off], 0.3).slowdown(me) == 1.0 + 0.3 * 1 / 2
    assert HostShare([me, on, on], 0.3).slowdown(me) == 1.0 + 0.3 * 2 / 2
    assert HostShare([me], 0.3).slowdown(me) == 1.0  # alone on its host
    assert HostShare([me, on], 0.0).slowdown(me) == 1.0
    with pytest.raises(ValueError):
        HostShare([me, on], -0.1)


def test_a_step_beside_a_busy_replica_takes_longer_by_the_contention() -> None:
    alone = replicas(1)[0]
    send(alone, "a")
    base = first_step(alone)
    expected = alone.cost.prefill_time(6 * BT, 0, chunk=512)
    assert base == expected  # the 384-token prompt in one step

    pair = replicas(2)
    share = HostShare(pair, 0.4)
    for r in pair:
        r.share_host(share)
        assert not r.decode_runs  # every step timed by the others at its start
    send(pair[0], "a")
    assert first_step(pair[0]) == base  # replica 1 idle
    send(pair[1], "b")
    assert first_step(pair[1]) == pytest.approx(1.4 * base, rel=1e-12)  # replica 0 busy
    assert pair[0].stepping and pair[1].stepping


def test_three_replicas_one_of_two_others_busy() -> None:
    trio = replicas(3)
    share = HostShare(trio, 0.5)
    for r in trio:
        r.share_host(share)
    send(trio[0], "a")
    base = first_step(trio[0])
    send(trio[1], "b")
    assert first_step(trio[1]) == pytest.approx(1.25 * base, rel=1e-12)  # 1 of 2 others
    send(trio[2], "c")
    assert first_step(trio[2]) == pytest.approx(1.5 * base, rel=1e-12)  # 2 of 2 others


def test_decode_steps_are_slowed_too_and_the_calls_finish_later() -> None:
    def finish(contention: float | None) -> float:
        pair = replicas(2)
        if contention is not None:
            share = HostShare(pair, contention)
            for r in pair:
                r.share_host(share)
        mine, other = send(pair[0], "a", output=8), send(pair[1], "b", output=40)
        now = 0.0
        done: set[str] = set()
        for _ in range(1000):
            ends = [e for e in (r.plan(now) for r in pair) if e is not None]
            ends += [r.step_end for r in pair if r.busy]
            if not ends:
                break
            now = min(ends)
            for r in pair:
                if r.busy and r.step_end == now:
                    done |= {x.workflow for x in r.complete(now)}
            if mine.workflow in done:
                return now
        raise AssertionError(f"not finished: {mine}, {other}")

    plain = finish(None)
    assert finish(0.0) == pytest.approx(plain, rel=1e-12)  # no contention: same time
    # "a"'s prefill step starts before replica 1 is busy; replica 1 then runs "b" (40
    # tokens) past "a"'s end, so each of "a"'s 7 decode steps is 1.3x
    prefill = replicas(1)[0].cost.prefill_time(6 * BT, 0, chunk=512)
    assert finish(0.3) == pytest.approx(prefill + 1.3 * (plain - prefill), rel=1e-12)


def test_the_simulator_shares_the_host_only_when_the_cluster_says_so() -> None:
    from saga.core.workflow import Call, Prompt, Workflow
    from saga.engine.cluster import get_cluster
    from saga.sched.registry import build_policy
    from saga.sim.simulator import Simulation

    flows = [Workflow(f"t/w{i}", "t", "a", 0.0,
                      (Call("c0", Prompt(640, (), ((0, 10),)), 8, (), 0.0, None),),
                      None, BT) for i in range(2)]
    shared = get_cluster("cpu-tiny")
    assert shared.host_contention == 0.29  # its engines share the machine's 2 cores
    base = shared.model_copy(update={"name": "cpu-tiny-apart", "host_contention": 0.0})
    plain = Simulation(base, build_policy("vllm-affinity"), flows)
    assert all(r.host_share is None and r.decode_runs for r in plain.replicas)
    sim = Simulation(shared, build_policy("vllm-affinity"), flows)
    assert all(r.host_share is not None and not r.decode_runs for r in sim.replicas)
    assert sim.replicas[0].host_share is sim.replicas[1].host_share
    assert sim.replicas[0].host_share is not None
    assert sim.replicas[0].host_share.contention == 0.29
    # two calls at once on two replicas take longer than with no contention
    assert max(w.tct for w in sim.run().workflows) > max(w.tct for w in plain.run().workflows)
