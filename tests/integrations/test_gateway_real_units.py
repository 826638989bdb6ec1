"""The real-engine backends' bookkeeping, without engines: vLLM priorities and body fields,
llama.cpp slots (LRU, pins) -- no HTTP is made on these paths."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from saga.gateway.backends import LlamaCppBackend, VLLMBackend, slot_file, vllm_priority
from saga.gateway.config import BackendConfig
from saga.sched.decisions import Retention


def test_vllm_priority_keeps_the_queue_order() -> None:
    keys = [(0.0, -3.0), (0.0, 0.5), (0.0, 2.0), (0.001, -100.0), (1.5, 0.0), (2.0,)]
    prios = [vllm_priority(k) for k in keys]
    assert prios == sorted(prios) and len(set(prios)) == len(prios)
    assert all(isinstance(p, int) for p in prios)


async def _with_backend(kind: str, **cfg: Any) -> tuple[Any, aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    config = BackendConfig(url="http://127.0.0.1:9", kind=kind, **cfg)
    cls = VLLMBackend if kind == "vllm" else LlamaCppBackend
    return cls(0, config, session, aiohttp.ClientTimeout(total=1)), session


def test_vllm_backend_sends_workflow_and_priority() -> None:
    async def run() -> list[dict[str, Any]]:
        out = []
        for scheduling in (True, False):
            backend, session = await _with_backend("vllm", priority_scheduling=scheduling)
            data: dict[str, Any] = {"vllm_xargs": {"mine": 1}}
            await backend.prepare("t/w1", data, {}, (0.0, 1.0, 5.0, 7.0))
            out.append(data)
            await session.close()
        return out

    with_priority, without = asyncio.run(run())
    sent = {"mine": 1, "saga_workflow": "t/w1", "saga_tenant": "t", "session_id": "t/w1"}
    assert with_priority == {"vllm_xargs": sent, "priority": vllm_priority((0.0, 1.0))}
    assert without == {"vllm_xargs": sent}


def test_vllm_backend_passes_the_call_to_saga_inside_vllm() -> None:
    from saga.sched.policy import CallInfo

    def call(tool: str | None, ends: bool) -> CallInfo:
        return CallInfo(workflow="t/w1", tenant="t", agent="coder", call_id="1", index=1,
                        tool=tool, prompt_tokens=10, runs=(), issued_at=0.0,
                        workflow_arrival=0.0, slo=None, ends_workflow=ends)

    async def run() -> list[dict[str, Any]]:
        backend, session = await _with_backend("vllm", priority_scheduling=False)
        out = []
        for info in (call("bash", False), call(None, True)):
            data: dict[str, Any] = {}
            await backend.prepare("t/w1", data, {}, None, info)
            out.append(data["vllm_xargs"])
        await session.close()
        return out

    middle, last = asyncio.run(run())
    base = {"saga_workflow": "t/w1", "saga_tenant": "t", "saga_agent": "coder",
            "session_id": "t/w1"}
    assert middle == {**base, "saga_tool": "bash"}
    assert last == {**base, "saga_end": True}


def test_llama_slots_are_lru_per_workflow_and_pins_hold() -> None:
    async def run() -> list[int]:
        backend, session = await _with_backend("llamacpp", slots=2)
        slots = []
        for wf in ("a", "b", "a"):
            data: dict[str, Any] = {}
            await backend.prepare(wf, data, {}, None)
            backend.finished(wf)
            assert data["cache_prompt"] is True
            slots.append(data["id_slot"])
        # b is now least recently used: c takes b's slot
        data = {}
        await backend.prepare("c", data, {}, None)
        backend.finished("c")
        slots.append(data["id_slot"])
        assert backend.slot_of("b") is None
        # a pinned: d takes c's slot although a's is older
        await backend.retain("a", Retention("pin", 60.0), 0.0)
        data = {}
        await backend.prepare("d", data, {}, None)
        slots.append(data["id_slot"])
        # a busy slot is not taken while an idle one exists
        data = {}
        await backend.prepare("e", data, {}, None)
        slots.append(data["id_slot"])
        await session.close()
        return slots

    a, b, a2, c, d, e = asyncio.run(run())
    assert a == a2 and a != b and c == b and d == c and e == a


def test_slot_files_are_bare_names() -> None:
    name = slot_file("tenant/../../etc/passwd")
    assert "/" not in name and name.endswith(".bin")
    assert name == slot_file("tenant/../../etc/passwd")
