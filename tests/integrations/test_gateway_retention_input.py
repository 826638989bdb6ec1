"""The gateway's retention input (issue 16, item 2): a finished call's blocks as the engine
counted them, and the memory the gateway has the replica hold -- without engines."""

from __future__ import annotations

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.decisions import RELEASE, Retention
from saga.sched.saga import SagaPolicy
from saga.sched.view import CallInfo


def _info(workflow: str, prompt_tokens: int, ends: bool = False) -> CallInfo:
    return CallInfo(workflow=workflow, tenant="default", agent="coder", call_id="0", index=0,
                    tool=None, prompt_tokens=prompt_tokens, runs=(), issued_at=0.0,
                    workflow_arrival=0.0, slo=None, ends_workflow=ends)


def test_a_finished_call_holds_the_full_blocks_the_engine_counted() -> None:
    call = GatewayCall(_info("w", 1000), 32, 128, 0, 0.0)
    assert call.locked_blocks == 0  # running: the engine's business
    call.served(1000 + 32)  # usage.total_tokens
    assert (call.locked_blocks, call.total_tokens) == (8, 1032)
    bare = GatewayCall(_info("w", 1000), 32, 128, 1, 0.0)
    bare.served(0)  # an answer without usage: the gateway's prompt estimate
    assert bare.locked_blocks == 1000 // 128


def test_the_view_counts_running_prompts_and_pins_as_held() -> None:
    view = RemoteReplicaView(0, capacity_blocks=40, block_tokens=128)
    a = GatewayCall(_info("a", 1000), 8, 128, 0, 0.0)
    b = GatewayCall(_info("b", 300), 8, 128, 1, 0.0)
    assert view.try_start(a, 0.0) and view.try_start(b, 0.0)
    assert view.kv.locked_blocks == 8 + 3
    view.finish(a, 1.0, lambda c: True)
    a.served(1040)
    view.note_retention("a", Retention("pin", ttl=5.0), 1.0, a)
    assert view.kv.locked_blocks == 3 + 8 and view.pins["a"].blocks == 8
    view.check_queue_tokens()
    nxt = GatewayCall(_info("a", 1200), 8, 128, 2, 2.0)
    assert view.try_start(nxt, 2.0) and "a" not in view.pins  # the pin became its prefix
    assert view.kv.locked_blocks == 3 + 10
    view.note_retention("b", RELEASE, 2.0, b)
    view.check_queue_tokens()
    c = GatewayCall(_info("c", 700), 8, 128, 3, 2.0)
    c.served(708)
    view.note_retention("c", Retention("pin", ttl=1.0), 2.0, c)
    assert view.kv.locked_blocks == 13 + 5
    view.note_retention("b", RELEASE, 3.5)  # sweeps c's expired pin
    assert view.kv.locked_blocks == 13
    view.check_queue_tokens()


def test_saga_retention_weighs_the_finished_calls_blocks() -> None:
    """Before the fix the gateway's call had 0 locked blocks, so retention always saw
    nothing to keep and released; now it sees the engine's count of the call's blocks
    (and, with the view's held memory, the pressure)."""
    gw = Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "cpu-tiny", "block_tokens": 128,
        "backends": [{"url": "http://127.0.0.1:9", "kind": "vllm"}],
    }))
    policy = gw.policy
    assert isinstance(policy, SagaPolicy)
    info = _info("default/w1", 2000)
    policy.on_call_ready(info, 0.0)
    index = policy.place(info, 0.0)
    view = gw.views[index]
    other = GatewayCall(_info("default/w2", 3000), 8, 128, 0, 0.0)
    call = GatewayCall(info, 16, 128, 1, 0.0)
    assert view.try_start(other, 0.0) and view.try_start(call, 0.0)
    view.finish(call, 1.0, lambda c: True)
    policy.on_call_finished(info, index, 1.0)
    call.served(2016)
    inp = policy._retention_input(view, call, 1.0)
    assert inp.blocks == 2016 // 128
    assert inp.memory.held == -(-3000 // 128)  # the other call still running there
    assert inp.memory.capacity == view.kv.capacity
