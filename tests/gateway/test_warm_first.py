"""Warm first (saga.sched.saga.warm_first, ``SagaConfig.warm_first_wait``): at the
gateway's queue in front of an engine that takes no priority, SAGA starts a call whose
prefix the replica holds before a cold call of the same tenant; the tenants' fair turns
come first; a cold call that waited ``warm_first_wait`` seconds keeps its place by
remaining work again; engines that order their own queue, and the simulator, never see it.
Exact orders on constructed queues (the view's fair queue with the policy's key, as the
gateway's ``release`` runs it), then through the gateway itself."""

from __future__ import annotations

import asyncio
from typing import Any

from held_backend import HeldBackend
from inproc import Post, chat

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.policy import CallInfo, Policy
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy
from saga.sched.saga.warm_first import cold

BLOCK = 16
#: warm first as measured (docs/engines.md, "Warm first at the gateway's queue"); off by
#: default
WARM = SagaConfig(warm_first_wait=5.0)


def _call(workflow: str, seq: int, blocks: int, now: float = 0.0,
          tenant: str = "t") -> GatewayCall:
    """A call of ``workflow`` whose prompt is ``blocks`` blocks: the first ``blocks`` of
    the workflow's own text (its earlier calls' prefix), enqueued at ``now``."""
    info = CallInfo(
        workflow=workflow, tenant=tenant, agent="a", call_id="0", index=0, tool=None,
        prompt_tokens=blocks * BLOCK, runs=((f"text:{workflow}", 0, blocks),), issued_at=now,
        workflow_arrival=now, slo=None, ends_workflow=False,
    )
    return GatewayCall(info, 16, BLOCK, seq, now)


def _replica(warm: dict[str, int]) -> RemoteReplicaView:
    """A replica of one concurrency slot holding ``warm[w]`` blocks of workflow w's text."""
    view = RemoteReplicaView(0, 1000, BLOCK, max_concurrency=1)
    for workflow, blocks in warm.items():
        view.kv.add(((f"text:{workflow}", 0, blocks),))
    return view


def _started(policy: Policy, view: RemoteReplicaView, queued: list[GatewayCall],
             now: float, weights: dict[str, float] | None = None) -> list[str]:
    """The workflows in the order the view starts ``queued`` (behind a running call), one
    slot freeing at a time at ``now``, ordered by the policy's gateway key."""
    running = _call("running", 0, 1)
    assert view.try_start(running, 0.0)
    for call in queued:
        view.enqueue(call, (weights or {}).get(call.tenant, 1.0))
    order: list[str] = []
    current = running
    while True:
        started = view.finish(current, now, lambda c: True,
                              lambda c: policy.gateway_queue_key(view, c, now))
        if not started:
            return order
        current = started[0]
        order.append(current.workflow)


def test_a_call_is_cold_below_half_its_prompt_cached_and_only_until_the_wait() -> None:
    view = _replica({"w": 5})
    assert cold(view, _call("w", 1, 10), 0.0, 5.0) == 0  # 5 of 10 blocks: warm
    assert cold(view, _call("w", 2, 11), 0.0, 5.0) == 1  # 5 of 11: cold
    assert cold(view, _call("x", 3, 4), 4.99, 5.0) == 1  # nothing cached
    assert cold(view, _call("x", 4, 4), 5.0, 5.0) == 0  # waited the bound


def test_warm_calls_start_before_cold_ones_within_a_tenant() -> None:
    # queued: two cold first calls, then two warm later calls; by arrival (what SAGA's
    # remaining-work key gives here: no flow known, equal priority) the cold ones go first
    view = _replica({"b": 8, "d": 6})
    queued = [_call("a", 1, 8), _call("c", 2, 8), _call("b", 3, 10), _call("d", 4, 10)]
    assert _started(SagaPolicy(WARM), view, queued, now=1.0) == ["b", "d", "a", "c"]
    off = SagaPolicy()  # the default: off
    view = _replica({"b": 8, "d": 6})
    queued = [_call("a", 1, 8), _call("c", 2, 8), _call("b", 3, 10), _call("d", 4, 10)]
    assert _started(off, view, queued, now=1.0) == ["a", "c", "b", "d"]


def test_the_key_adds_the_cold_element_after_the_tenants_share() -> None:
    policy = SagaPolicy(WARM)
    view = _replica({"b": 8})
    warm, first = _call("b", 1, 10), _call("a", 2, 8)
    base_warm, base_first = policy.queue_key(view, warm, 1.0), policy.queue_key(view, first, 1.0)
    assert policy.gateway_queue_key(view, warm, 1.0) == (base_warm[0], 0, *base_warm[1:])
    assert policy.gateway_queue_key(view, first, 1.0) == (base_first[0], 1, *base_first[1:])
    # off (the default), the gateway's key is the engine's
    off = SagaPolicy()
    assert off.gateway_queue_key(view, first, 1.0) == off.queue_key(view, first, 1.0)


def test_fair_share_comes_before_warm_first() -> None:
    # tenant u's only call is cold, tenant t's are warm: the fair queue alternates the
    # tenants' turns, so u's cold call starts second, not after all of t's warm ones
    view = _replica({"t1": 8, "t2": 8, "t3": 8})
    queued = [_call("t1", 1, 10), _call("t2", 2, 10), _call("t3", 3, 10),
              _call("u1", 4, 10, tenant="u")]
    assert _started(SagaPolicy(WARM), view, queued, now=1.0) == ["t1", "u1", "t2", "t3"]


def test_a_cold_call_past_the_wait_keeps_its_place_by_remaining_work() -> None:
    # the cold call was enqueued at 0, the warm ones at 1; at 6 s it has waited 6 s, past
    # the 5 s bound: it goes by remaining work and aging again (equal priorities, so its
    # longer wait puts it first); at 4 s it still yields
    def queue() -> tuple[RemoteReplicaView, list[GatewayCall]]:
        view = _replica({"b": 8, "c": 8})
        return view, [_call("a", 1, 8, now=0.0), _call("b", 2, 10, now=1.0),
                      _call("c", 3, 10, now=1.0)]

    view, queued = queue()
    assert _started(SagaPolicy(WARM), view, queued, now=6.0) == ["a", "b", "c"]
    view, queued = queue()
    assert _started(SagaPolicy(WARM), view, queued, now=4.0) == ["b", "c", "a"]
    view, queued = queue()  # a bound of 10 s: still yielding at 6 s
    assert _started(SagaPolicy(SagaConfig(warm_first_wait=10.0)), view, queued,
                    now=6.0) == ["b", "c", "a"]


# ---- through the gateway: a backend that takes no priority, and one that does -------------

def _prompt(name: str, n: int) -> dict[str, Any]:
    """A chat call whose text is ``n`` paragraphs of ``name``'s own (its prefix grows)."""
    return chat(" ".join(f"{name} paragraph {i}: " + "lorem ipsum dolor sit amet " * 30
                         for i in range(n)))


def _gateway_order(takes_priority: bool, warm_first: bool = True) -> list[str]:
    gateway = Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "small",
        "backends": [{"url": "http://127.0.0.1:1", "max_concurrency": 1}]}))
    policy = gateway.policy
    assert isinstance(policy, SagaPolicy)
    if warm_first:  # off by default
        policy.config = policy.config.model_copy(update={"warm_first_wait": 5.0})
    backend = HeldBackend(takes_priority)
    gateway.backends = [backend]  # type: ignore[list-item]

    async def run() -> None:
        answered = 0

        async def call(name: str, n: int) -> None:
            response = await gateway.handle(Post("/v1/chat/completions", _prompt(name, n),
                                                 {"x-saga-workflow": name}))
            assert response.status == 200

        async def answer_next() -> None:
            nonlocal answered
            while len(backend.answers) <= answered:
                await asyncio.sleep(0)
            backend.answers[answered].set()
            answered += 1

        async def settle() -> None:
            for _ in range(100):
                await asyncio.sleep(0)

        # w's first call runs alone and is answered: its text is now on the replica
        tasks = [asyncio.create_task(call("w", 4))]
        await settle()
        await answer_next()
        await tasks.pop()
        # "hold" takes the slot; a new workflow's cold call queues, then w's warm one
        tasks.append(asyncio.create_task(call("hold", 1)))
        await settle()
        tasks.append(asyncio.create_task(call("cold", 4)))
        await settle()
        tasks.append(asyncio.create_task(call("w", 5)))
        await settle()
        for _ in range(3):
            await answer_next()
            await settle()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    return backend.sent


def test_the_gateway_starts_the_warm_call_first_when_the_engine_takes_no_priority() -> None:
    assert _gateway_order(takes_priority=False) == ["w", "hold", "w", "cold"]


def test_an_engine_that_takes_priorities_keeps_the_gateways_arrival_order() -> None:
    assert _gateway_order(takes_priority=True) == ["w", "hold", "cold", "w"]


def test_without_warm_first_the_cold_call_goes_first_there_too() -> None:
    # SAGA's remaining-work key alone: the new workflow's call (nothing learned of its
    # rest) goes before w's second call, the order warm first changes
    assert _gateway_order(takes_priority=False, warm_first=False) == ["w", "hold", "cold", "w"]
