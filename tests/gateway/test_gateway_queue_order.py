"""For a backend that takes no priority (llama.cpp), the policy's queue key orders the
calls waiting at the gateway for its concurrency slots; a backend that takes priorities
(the engine orders its own queue) keeps the gateway's fair arrival order."""

from __future__ import annotations

import asyncio

from held_backend import HeldBackend
from inproc import Post, chat

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.sched.view import CallView, ReplicaView


def _sent_order(takes_priority: bool) -> list[str]:
    gateway = Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "small",
        "backends": [{"url": "http://127.0.0.1:1", "max_concurrency": 1}]}))
    backend = HeldBackend(takes_priority)
    gateway.backends = [backend]  # type: ignore[list-item]
    rank = {"first": 0.0, "a": 3.0, "b": 2.0, "c": 1.0}  # c, then b, then a

    def key(replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return (rank[request.workflow.partition("/")[2]],)

    gateway.policy.queue_key = key  # type: ignore[method-assign]

    async def run() -> None:
        calls = []
        for name in ("first", "a", "b", "c"):  # first runs; a, b, c queue in that order
            calls.append(asyncio.create_task(gateway.handle(Post(
                "/v1/chat/completions", chat(f"call of {name}"),
                {"x-saga-workflow": name}))))
            for _ in range(50):
                await asyncio.sleep(0)
        for k in range(4):
            while len(backend.answers) <= k:
                await asyncio.sleep(0)
            backend.answers[k].set()
        for call in calls:
            assert (await call).status == 200

    asyncio.run(run())
    return backend.sent


def test_the_policys_key_orders_the_gateway_queue_when_the_engine_takes_no_priority() -> None:
    assert _sent_order(takes_priority=False) == ["first", "c", "b", "a"]


def test_an_engine_that_takes_priorities_keeps_the_gateways_arrival_order() -> None:
    assert _sent_order(takes_priority=True) == ["first", "a", "b", "c"]
