"""For a backend that takes no priority (llama.cpp), the policy's queue key orders the
calls waiting at the gateway for its concurrency slots; a backend that takes priorities
(the engine orders its own queue) keeps the gateway's fair arrival order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from inproc import Post, chat

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.sched.view import CallView, ReplicaView


class _Upstream:
    status = 200
    content_type = "application/json"

    def __init__(self, answer: asyncio.Event) -> None:
        self.headers: dict[str, str] = {}
        self._answer = answer

    async def read(self) -> bytes:
        await self._answer.wait()
        return json.dumps({"choices": [], "usage": {"total_tokens": 70}}).encode()

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Backend:
    """Records the workflows in the order their calls are sent; each answer is held
    until the test sets it."""

    label = "b0"
    retains = False
    offloads = False
    retains_in_order = False

    def __init__(self, takes_priority: bool) -> None:
        self.takes_priority = takes_priority
        self.sent: list[str] = []
        self.answers: list[asyncio.Event] = []

    async def prepare(self, workflow: str, data: dict[str, Any], headers: dict[str, str],
                      key: Any, call: Any = None) -> None:
        self.sent.append(workflow.partition("/")[2])

    async def send(self, path: str, body: bytes, headers: dict[str, str]) -> _Upstream:
        gate = asyncio.Event()
        self.answers.append(gate)
        return _Upstream(gate)

    def finished(self, workflow: str) -> None:
        pass

    def forget(self, workflow: str) -> None:
        pass


def _sent_order(takes_priority: bool) -> list[str]:
    gateway = Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "small",
        "backends": [{"url": "http://127.0.0.1:1", "max_concurrency": 1}]}))
    backend = _Backend(takes_priority)
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
