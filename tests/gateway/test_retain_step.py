"""A workflow's next call waits for its previous call's retention step (issue 16: a pin's
``saga_ttl`` hint rides the next call, and the step that stores it may still be running
when the agent sends that call).

The backend here is a vLLM-like fake whose retention step the test holds and releases
(events, no sleeps racing): the hint must ride the next call every time, a hung step
must not stall the workflow past ``retain_wait``, and calls of one workflow sent in
parallel do not wait for each other."""

from __future__ import annotations

import asyncio
from typing import Any

from held_backend import HeldUpstream
from inproc import Post, chat

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.sched.decisions import Retention
from saga.sched.view import CallView, ReplicaView


class HintingBackend:
    """As :class:`~saga.gateway.backends.VLLMBackend`: a pin is remembered by the retention
    step and sent with the workflow's next call; each step ends when the test sets its
    event in ``held``."""

    label = "b0"
    takes_priority = False
    retains = True
    offloads = False
    retains_in_order = False

    def __init__(self) -> None:
        self.hints: dict[str, float] = {}
        self.sent: list[float | None] = []  # the hint each call carried, in send order
        self.held: list[asyncio.Event] = []  # one per retention step, in order
        self.answers: list[asyncio.Event | None] = []  # per call: held until set (None: not)

    async def prepare(self, workflow: str, data: dict[str, Any], headers: dict[str, str],
                      key: Any, call: Any = None) -> None:
        self.sent.append(self.hints.pop(workflow, None))

    async def send(self, path: str, body: bytes, headers: dict[str, str]) -> HeldUpstream:
        return HeldUpstream(self.answers.pop(0) if self.answers else None)

    def finished(self, workflow: str) -> None:
        pass

    def forget(self, workflow: str) -> None:
        pass

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        gate = asyncio.Event()
        self.held.append(gate)
        await gate.wait()
        if decision.kind == "pin":
            self.hints[workflow] = decision.ttl


def _gateway(retain_wait: float = 1.0, in_order: bool = False) -> tuple[Gateway, HintingBackend]:
    config = GatewayConfig.model_validate({
        "cluster": "small", "backends": [{"url": "http://127.0.0.1:1"}],
        "retain_wait": retain_wait,
    })
    gateway = Gateway(config)
    backend = HintingBackend()
    backend.retains_in_order = in_order
    gateway.backends = [backend]  # type: ignore[list-item]

    def pin(replica: ReplicaView, request: CallView, now: float) -> Retention:
        return Retention("pin", ttl=7.5)

    gateway.policy.retention = pin  # type: ignore[method-assign]
    return gateway, backend


def _call(turn: int) -> Post:
    return Post("/v1/chat/completions", chat("step " * (20 + turn)),
                {"x-saga-workflow": "w", "x-saga-tool": "bash"})


async def _settle() -> None:
    """Run every ready callback: no I/O and no timers here, so the loop has nothing else
    to wait for once this returns (a fixed number of passes, never a clock)."""
    for _ in range(100):
        await asyncio.sleep(0)


def test_the_next_call_waits_for_the_retention_step_and_carries_its_hint() -> None:
    gateway, backend = _gateway()

    async def run() -> None:
        assert (await gateway.handle(_call(0))).status == 200
        for k in range(1, 6):
            await _settle()
            assert len(backend.held) == k  # call k-1 is answered, its step is held
            nxt = asyncio.create_task(gateway.handle(_call(k)))
            await _settle()
            assert len(backend.sent) == k  # call k is not sent: it waits for the step
            backend.held[k - 1].set()
            assert (await nxt).status == 200
            assert backend.sent[k] == 7.5  # the hint rode it

    asyncio.run(run())
    assert backend.sent == [None] + [7.5] * 5
    assert gateway.metrics.retain_wait_timeouts == 0


def test_a_hung_retention_step_holds_the_next_call_only_for_retain_wait() -> None:
    gateway, backend = _gateway(retain_wait=0.01)

    async def run() -> None:
        assert (await gateway.handle(_call(0))).status == 200
        await _settle()
        assert len(backend.held) == 1  # the step runs, and never ends
        assert (await gateway.handle(_call(1))).status == 200

    asyncio.run(run())
    assert backend.sent == [None, None]  # no hint to carry: the step never stored it
    assert gateway.metrics.retain_wait_timeouts == 1


def test_a_backend_that_retains_in_order_does_not_hold_the_next_call() -> None:
    # llama.cpp's backend: it records the decision as its step starts and the server runs
    # the slot actions in order, so the next call goes while the step is still running
    gateway, backend = _gateway(in_order=True)

    async def run() -> None:
        assert (await gateway.handle(_call(0))).status == 200
        await _settle()
        assert len(backend.held) == 1  # the step runs, held
        assert (await gateway.handle(_call(1))).status == 200  # sent without waiting
        assert len(backend.sent) == 2
        for gate in backend.held:
            gate.set()
        await _settle()

    asyncio.run(run())
    assert gateway.metrics.retain_wait_timeouts == 0
    # the steps ran to their end, and were timed (Metrics.retain_steps)
    assert [(r.workflow, r.kind) for r in gateway.metrics.retain_steps] == [
        ("default/w", "pin"), ("default/w", "pin")]


def test_a_call_sent_while_another_is_answered_does_not_wait_for_it() -> None:
    gateway, backend = _gateway()

    async def run() -> None:
        held = asyncio.Event()
        backend.answers = [held, None]  # the first call's answer stays at the backend
        first = asyncio.create_task(gateway.handle(_call(0)))
        await _settle()
        assert len(backend.sent) == 1
        assert (await gateway.handle(_call(1))).status == 200  # parallel: no wait
        assert backend.sent == [None, None]
        held.set()
        assert (await first).status == 200

    asyncio.run(run())


class _Lines:
    """An upstream event stream, in the pieces ``read_lines`` hands out."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def read_lines(self) -> bytes | None:
        return self._pieces.pop(0) if self._pieces else None


class _Client:
    """The client's end of a stream: what it has received when the step begins."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.finished = False

    async def write(self, data: bytes) -> bool:
        self.got.append(data)
        return True

    async def finish(self) -> None:
        self.finished = True


def test_a_streamed_answer_begins_its_step_before_the_client_sees_its_end() -> None:
    from saga.gateway.metrics import Metrics
    from saga.gateway.relay import relay

    text = b'data: {"choices": [{"text": "hi"}]}\n\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "total_tokens": 9}}\n\n'
    done = b"data: [DONE]\n\n"
    cases = {"usage then [DONE]": [text, usage, done], "in one piece": [text, usage + done],
             "no usage": [text, done], "neither": [text]}
    for name, pieces in cases.items():
        client = _Client()
        seen: list[tuple[int, bool]] = []

        def answered(client: _Client = client, seen: list[tuple[int, bool]] = seen) -> None:
            seen.append((len(client.got), client.finished))

        found, ok = asyncio.run(relay(Metrics(), _Lines(list(pieces)), client,  # type: ignore[arg-type]
                                      None, None, client_usage=True,  # type: ignore[arg-type]
                                      answered=answered))
        assert ok and client.finished, name
        assert seen[0] == (1, False), name  # only the text had reached the client
        assert tuple(found) == ((9, 7) if usage in b"".join(pieces) else (0, 0)), name
