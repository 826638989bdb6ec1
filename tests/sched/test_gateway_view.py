"""The replicas as a gateway sees them (saga.sched.gateway_view): what llm-d reads in the
simulator equals what the gateway's own view (saga.gateway.view.RemoteReplicaView) computes
from the same calls in flight."""

from __future__ import annotations

import random

from saga.engine.cluster import get_cluster
from saga.engine.kvcache import Run
from saga.engine.replica import Replica, Request
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.baselines.llmd import LLMD, kv_usage
from saga.sched.gateway_view import GatewayReplicaView, with_gateway_views
from saga.sched.policy import CallInfo, PolicyContext, WorkflowInfo
from saga.sched.view import CallView

BT = 64
CAPACITY = 20


def info(workflow: str, prompt_tokens: int) -> CallInfo:
    runs: tuple[Run, ...] = ((f"w:{workflow}", 0, prompt_tokens // BT),)
    return CallInfo(workflow=workflow, tenant="t", agent="a", call_id="c0", index=0,
                    tool=None, prompt_tokens=prompt_tokens, runs=runs, issued_at=0.0,
                    workflow_arrival=0.0, slo=None, ends_workflow=False)


def engines(policy: LLMD | None = None) -> list[Replica]:
    cluster = get_cluster("test-2")
    cost = cluster.cost_model()
    hooks = policy or LLMD()
    return [Replica(i, cluster.engine, cost, hooks, block_tokens=BT, capacity_blocks=CAPACITY)
            for i in range(2)]


def send(replica: Replica, call: CallInfo, seq: int) -> Request:
    request = Request(call.workflow, call.call_id, call.runs, call.prompt_tokens, 8, BT, seq,
                      info=call)
    replica.enqueue(request, 0.0)
    return request


#: (replica, workflow, prompt tokens the engine counts, tokens the gateway counts)
IN_FLIGHT = [(0, "a", 640, 400), (0, "b", 512, 256), (0, "c", 700, 300),
             (1, "d", 128, 100)]


def test_llmd_signal_equals_the_gateway_view() -> None:
    """Calls in flight, some admitted by vLLM (holding blocks) and some left waiting: the
    simulator's gateway view gives llm-d the gateway's KV usage and queue depth, which are
    not the engine's."""
    replicas = engines()
    gateway = [RemoteReplicaView(i, CAPACITY, BT) for i in range(2)]
    given: dict[str, int] = {}
    for seq, (i, workflow, engine_tokens, counted) in enumerate(IN_FLIGHT):
        send(replicas[i], info(workflow, engine_tokens), seq)
        given[workflow] = counted
        call = GatewayCall(info(workflow, counted), 8, BT, seq, 0.0)
        assert gateway[i].try_start(call, 0.0)
    # vLLM admits what fits: replica 0 runs "a" (10 blocks) and "b" (8); "c" waits
    assert replicas[0].plan(0.0) is not None
    assert [r.workflow for r in replicas[0].waiting] == ["c"]
    assert replicas[0].kv.locked_blocks + replicas[0].kv.anonymous_blocks == 18

    def tokens(call: CallView) -> int | None:
        return given[call.workflow]

    seen = [GatewayReplicaView(r, tokens) for r in replicas]
    sim = PolicyContext(seen, replicas[0].cost, BT)
    real = PolicyContext(gateway, replicas[0].cost, BT)
    for i in range(2):
        assert kv_usage(sim, i) == kv_usage(real, i)
        assert list(seen[i].waiting) == list(gateway[i].waiting) == []
    # the gateway counts "c" although vLLM left it waiting: ceil(400/64) + 4 + ceil(300/64)
    assert seen[0].kv.locked_blocks == gateway[0].kv.locked_blocks == 7 + 4 + 5
    assert seen[0].kv.locked_blocks != 18
    flow = LLMD().flow
    assert flow.saturation(sim) == flow.saturation(real) == (16 / 20 / 0.8 + 2 / 20 / 0.8) / 2


def test_in_flight_past_the_gateway_limit_wait_at_the_gateway() -> None:
    replicas = engines()
    for seq in range(3):
        send(replicas[0], info(f"w{seq}", 128), seq)
    seen = GatewayReplicaView(replicas[0], max_concurrency=2)
    assert [c.workflow for c in seen.waiting] == ["w2"]
    assert seen.kv.locked_blocks == 3 * 2  # the engine's count without the gateway's


def test_llmd_holds_at_the_door_on_the_gateway_count() -> None:
    """The engine's usage is below llm-d's saturation, the gateway's count is at it: the
    wrapped llm-d defers the next workflow, the plain one admits it."""
    plain, viewed = LLMD(), with_gateway_views(LLMD())
    for policy in (plain, viewed):
        replicas = engines()
        policy.bind(PolicyContext(replicas, replicas[0].cost, BT, rng=random.Random(0)))
        for seq, r in enumerate(replicas):
            # each replica: two calls of 20 blocks in flight, one admitted, one waiting
            send(r, info(f"x{seq}", 20 * BT), 2 * seq)
            send(r, info(f"y{seq}", 20 * BT), 2 * seq + 1)
            r.plan(0.0)
            assert len(r.waiting) == 1
        verdict = policy.admit(WorkflowInfo("new", "t", "a", 0.0, None), 0.0).verdict
        # engine: max(1 waiting / 5, 20/20 / 0.8) = 1.25 per replica -> both saturated
        assert verdict == "defer"
    # with half the blocks: engine 10/20/0.8 = 0.625 and 1/5; gateway (10+10)/20/0.8 = 1.25
    verdicts = []
    for policy in (LLMD(), with_gateway_views(LLMD())):
        replicas = engines()
        policy.bind(PolicyContext(replicas, replicas[0].cost, BT, rng=random.Random(0)))
        for seq, r in enumerate(replicas):
            send(r, info(f"x{seq}", 10 * BT), 2 * seq)
            send(r, info(f"y{seq}", 15 * BT), 2 * seq + 1)
            r.plan(0.0)
            assert [c.workflow for c in r.waiting] == [f"y{seq}"]
        verdicts.append(policy.admit(WorkflowInfo("new", "t", "a", 0.0, None), 0.0).verdict)
    assert verdicts == ["admit", "defer"]
