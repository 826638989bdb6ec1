"""A stand-in backend for the gateway's queue tests: it records the order in which calls are
sent and holds each answer until the test releases it (``answers[i].set()``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HeldUpstream:
    status = 200
    content_type = "application/json"

    def __init__(self, answer: asyncio.Event | None) -> None:
        self.headers: dict[str, str] = {}
        self._answer = answer  # None: answered at once

    async def read(self) -> bytes:
        if self._answer is not None:
            await self._answer.wait()
        return json.dumps({"choices": [], "usage": {"total_tokens": 70}}).encode()

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class HeldBackend:
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

    async def send(self, path: str, body: bytes, headers: dict[str, str]) -> HeldUpstream:
        gate = asyncio.Event()
        self.answers.append(gate)
        return HeldUpstream(gate)

    def finished(self, workflow: str) -> None:
        pass

    def forget(self, workflow: str) -> None:
        pass
