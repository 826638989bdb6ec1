"""Pure pieces of the gateway: text to runs, config validation, store, replica view."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from saga.errors import UserError
from saga.gateway.config import GatewayConfig, load_config
from saga.gateway.store import MemoryStore
from saga.gateway.view import ApproxPrefixIndex, GatewayCall
from saga.sched.view import CallInfo
from saga.wire.prefix import chat_text, estimate_tokens, text_runs


def test_text_runs_share_exactly_the_common_prefix() -> None:
    block = 64 * 4
    a = "A" * block * 3 + "tail"
    b = "A" * block * 2 + "B" * block
    ra, rb = text_runs(a, 64), text_runs(b, 64)
    assert len(ra) == 3 and len(rb) == 3
    assert ra[:2] == rb[:2] and ra[2] != rb[2]
    # the same block content after a different prefix has another name (chained hash)
    assert text_runs("B" * block + "A" * block, 64)[1] != ra[1]
    assert text_runs("short", 64) == ()
    assert estimate_tokens("abcde") == 2 and estimate_tokens("") == 1
    assert chat_text([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == (
        "<|user|>\nhi\n"
    )


def test_config_errors_are_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backends": [{"url": "localhost:9000"}], "port": 70000}))
    with pytest.raises(UserError) as info:
        load_config(bad)
    assert "must start with http://" in str(info.value) and "port" in str(info.value)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.toml")
    dup = {"backends": [{"url": "http://127.0.0.1:1"}],
           "tenants": {"a": {"keys": ["k"]}, "b": {"keys": ["k"]}}}
    with pytest.raises(ValueError, match="API key used by tenants"):
        GatewayConfig.model_validate(dup)
    example = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
    assert load_config(example).tenants["alice"].weight == 2.0


def test_memory_store_sessions_expire() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])

    async def main() -> None:
        await store.set_home("w", 2, ttl=10)
        await store.mark_admitted("w", ttl=10)
        session = await store.session("w")
        assert session.home == 2 and session.admitted
        await store.record_call("t", "agent", None, 100, 0.5)
        await store.record_call("t", "agent", "grep", 50, 0.25)
        assert await store.tenant_tokens() == {"t": 150.0}
        assert await store.graph_stats("u", "agent") == {}  # statistics are per tenant
        assert (await store.graph_stats("t", "agent"))["grep"] == {
            "calls": 1.0, "tokens": 50.0, "latency": 0.25}
        now[0] = 11.0
        session = await store.session("w")
        assert session.home is None and not session.admitted

    asyncio.run(main())


def test_approx_prefix_index_is_lru_bounded() -> None:
    index = ApproxPrefixIndex(capacity_blocks=3)
    runs = (("h:1", 0, 1), ("h:2", 0, 1), ("h:3", 0, 1))
    index.add(runs)
    assert index.match_blocks(runs) == 3
    index.add((("h:9", 0, 1),))  # evicts the least recently used block, h:1
    assert index.match_blocks(runs) == 0 and index.used_blocks == 3


def test_view_offers_what_placement_reads_of_a_host_tier() -> None:
    """The SAGA policy reads ``host.cached_blocks`` of a replica with a host tier (the
    gateway's llama.cpp views); an untracked host tier is empty, so nothing matches."""
    from saga.gateway.view import RemoteReplicaView

    view = RemoteReplicaView(0, capacity_blocks=8, block_tokens=16, host_blocks=32)
    assert view.host is not None and view.host.cached_blocks == 0
    view.kv.add([("h:a", 0, 3)])
    assert view.kv.cached_blocks == view.kv.used_blocks == 3


def _calls(n: int) -> list[GatewayCall]:
    """Calls w1..wn of 100*i prompt tokens each, tenant ``t``."""
    return [
        GatewayCall(
            CallInfo(f"w{i}", "t", "a", "c0", 0, None, 100 * i, (), 0.0, 0.0, None, False),
            32, 16, i, 0.0,
        )
        for i in range(1, n + 1)
    ]


def test_view_keeps_the_queue_sums_placement_reads_as_calls_come_and_go() -> None:
    """The gateway's calls never progress in its view (computed and generated stay 0):
    no context, each waiting call needs its whole prompt, a running one all but a token."""
    from saga.gateway.view import RemoteReplicaView

    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=1)
    a, b, c = _calls(3)
    assert view.try_start(a, 1.0) and not view.try_start(b, 1.0)
    view.enqueue(b, 1.0)
    view.enqueue(c, 1.0)
    view.check_queue_tokens()
    assert (view.context_tokens, view.demand_tokens, view.backlog_tokens) == (0, 500, 599)
    assert view.load() == 3 and view.outstanding_tokens() == 600 + 3 * 32
    assert view.withdraw(c) and not view.withdraw(c)  # c's client leaves
    assert view.finish(a, 2.0, lambda call: True) == [b]  # a ended: b gets its slot
    assert b.scheduled_at == 2.0 and view.running == [b] and view.waiting == []
    view.check_queue_tokens()
    assert (view.context_tokens, view.demand_tokens, view.backlog_tokens) == (0, 0, 199)


def test_view_queue_is_fair_across_tenants_by_weight() -> None:
    """Start-time fair queueing per backend: a heavy tenant's queued calls do not keep a
    light tenant's later call waiting behind all of them."""
    from saga.gateway.view import RemoteReplicaView

    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=1)
    first, *heavy = _calls(4)
    light = GatewayCall(
        CallInfo("x", "light", "a", "c0", 0, None, 100, (), 0.0, 0.0, None, False), 32, 16, 9, 0.0
    )
    assert view.try_start(first, 0.0)
    for call in heavy:
        view.enqueue(call, 1.0)
    view.enqueue(light, 1.0)
    # start tags: the heavy tenant's 0, 232, 564 (prompt + max_tokens apart), light's 0;
    # equal tags go by arrival (seq)
    assert view.waiting == [heavy[0], light, heavy[1], heavy[2]]
    assert view.finish(first, 1.0, lambda call: True) == [heavy[0]]
    assert view.finish(heavy[0], 2.0, lambda call: True) == [light]
    # a waiting call that is no longer startable (its client left) is dropped
    assert view.finish(light, 3.0, lambda call: call is not heavy[1]) == [heavy[2]]
    assert view.waiting == [] and view.load() == 1
    view.check_queue_tokens()


def test_view_queue_starts_a_tenants_lowest_keyed_call_in_its_turn() -> None:
    """For an engine that takes no priority, the policy's queue key orders each tenant's
    waiting calls; the tenants' turns (fair tags) stay as they were."""
    from saga.gateway.view import RemoteReplicaView

    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=1)
    first, *heavy = _calls(4)
    light = GatewayCall(
        CallInfo("x", "light", "a", "c0", 0, None, 100, (), 0.0, 0.0, None, False), 32, 16, 9, 0.0
    )
    assert view.try_start(first, 0.0)
    for call in heavy:
        view.enqueue(call, 1.0)
    view.enqueue(light, 1.0)
    keys = {"w2": 3.0, "w3": 2.0, "w4": 1.0, "x": 9.0}  # the heavy tenant's last call first

    def order(call: GatewayCall) -> tuple[float, ...]:
        return (keys[call.workflow],)

    # without an order: heavy[0] (w2), light, heavy[1], heavy[2] (the fair test above)
    assert view.finish(first, 1.0, lambda call: True, order) == [heavy[2]]
    assert view.finish(heavy[2], 2.0, lambda call: True, order) == [light]  # light's turn
    assert view.finish(light, 3.0, lambda call: True, order) == [heavy[1]]
    assert view.finish(heavy[1], 4.0, lambda call: True, order) == [heavy[0]]
    assert view.waiting == []
    view.check_queue_tokens()


def test_view_keeps_the_pins_the_policy_asked_for() -> None:
    """Pins are stored as the protocol says (``.expires``), so ``Policy.unpin_order`` reads
    them; the next call of the workflow, an unpin or expiry lets them go."""
    from saga.gateway.view import RemoteReplicaView
    from saga.sched.decisions import RELEASE, Retention
    from saga.sched.policy import Policy
    from saga.sched.vllm import RoundRobinRouter

    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16)
    view.note_retention("w1", Retention("pin", ttl=5.0), 1.0)
    view.note_retention("w2", Retention("pin", ttl=2.0), 1.0)
    view.note_retention("w3", RELEASE, 1.0)
    assert view.pins["w1"].expires == 6.0 and "w3" not in view.pins
    assert Policy(RoundRobinRouter()).unpin_order(view, 1.0) == ["w2", "w1"]
    w1 = _calls(1)[0]
    assert view.try_start(w1, 2.0) and "w1" not in view.pins  # its next call uses it
    assert view.unpin("w2", 2.0) and not view.unpin("w2", 2.0)
    view.note_retention("w4", Retention("pin", ttl=1.0), 3.0)
    view.note_retention("w5", Retention("pin", ttl=1.0), 4.5)  # sweeps w4, expired at 4
    assert list(view.pins) == ["w5"]


def test_gateway_moves_calls_through_the_view_verbs() -> None:
    """Concurrency slots and the fair queue keep the view's sums exact: a call over the
    limit waits, takes the slot a finished call frees, or leaves (cancelled)."""
    from saga.gateway.app import Gateway

    config = GatewayConfig.model_validate({
        "cluster": "small", "backends": [{"url": "http://127.0.0.1:1", "max_concurrency": 1}],
    })
    gateway = Gateway(config)
    # backends are built at start(), with a session: only the label is read here
    gateway.backends = [SimpleNamespace(label="b0")]  # type: ignore[list-item]
    view = gateway.views[0]
    a, b, c = _calls(3)

    async def traffic() -> None:
        await gateway.pipeline.acquire(0, a, "t")
        waiter_b = asyncio.create_task(gateway.pipeline.acquire(0, b, "t"))
        waiter_c = asyncio.create_task(gateway.pipeline.acquire(0, c, "t"))
        await asyncio.sleep(0)
        assert view.running == [a] and view.waiting == [b, c]
        view.check_queue_tokens()
        waiter_c.cancel()
        gateway.pipeline.release(0, a)
        await waiter_b
        with pytest.raises(asyncio.CancelledError):
            await waiter_c
        assert view.running == [b] and not view.waiting
        view.check_queue_tokens()
        gateway.pipeline.release(0, b)

    asyncio.run(traffic())
    view.check_queue_tokens()
    assert (view.context_tokens, view.demand_tokens, view.backlog_tokens) == (0, 0, 0)


def test_policy_observes_every_call_and_may_move_a_workflow_it_placed() -> None:
    from saga.gateway.app import Gateway, WorkflowState
    from saga.sched.policy import CallInfo, WorkflowInfo

    config = GatewayConfig.model_validate({
        "policy": "test-stealing", "plugins": ["saga_test_policies"], "cluster": "small",
        "backends": [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2"}],
    })
    assert config.sticky_sessions  # the default
    gateway = Gateway(config)

    def call(workflow: str, index: int) -> CallInfo:
        return CallInfo(workflow=workflow, tenant="t", agent="a", call_id=str(index),
                        index=index, tool=None, prompt_tokens=64, runs=(), issued_at=0.0,
                        workflow_arrival=0.0, slo=None, ends_workflow=False)

    async def places() -> list[int]:
        mine = WorkflowState(WorkflowInfo("mine", "t", "a", 0.0, None))
        theirs = WorkflowState(WorkflowInfo("theirs", "t", "a", 0.0, None))
        home = None
        chosen = []
        for k in range(3):  # this gateway placed every call: the policy moves it
            home = await gateway.pipeline.place(call("mine", k), home, 0.0, mine)
            chosen.append(home)
        # another gateway homed "theirs" on replica 1 (the shared store says so)
        for k in range(2):
            chosen.append(await gateway.pipeline.place(call("theirs", 2 * k), 1, 0.0, theirs))
        return chosen

    assert asyncio.run(places()) == [0, 1, 0, 1, 1]
    policy = gateway.policy
    assert policy.observed == ["mine/0", "mine/1", "mine/2", "theirs/0", "theirs/2"]  # type: ignore[attr-defined]


def test_tenant_weights_in_the_config_reach_the_policy() -> None:
    from saga.gateway.app import Gateway
    from saga.sched.saga.policy import SagaPolicy

    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "small", "backends": [{"url": "http://127.0.0.1:1"}],
        "tenants": {"alice": {"keys": ["ka"], "weight": 3.0}, "bob": {"keys": ["kb"]}},
    })
    policy = Gateway(config).policy
    assert isinstance(policy, SagaPolicy)
    assert policy.fair.account("alice").weight == 3.0
    assert policy.fair.account("bob").weight == 1.0
