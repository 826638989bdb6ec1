"""A slot restore that finds no room in llama.cpp's KV makes room from idle saved slots."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from saga.gateway.app import Gateway
from saga.gateway.backends import BackendError, LlamaCppBackend
from saga.gateway.config import BackendConfig, GatewayConfig
from saga.gateway.prometheus import render_metrics
from saga.sched.decisions import Retention

KV = 4  # cells of each workflow's KV


class _FakeLlama:
    """llama.cpp's slot actions over one unified KV of ``capacity`` cells: a restore
    clears its slot, then needs the saved KV's cells free (else it fails, as
    ``state_read_meta`` does); erase frees a slot's cells."""

    def __init__(self, directory: Path, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self.cells: dict[int, int] = {}
        self.calls: list[str] = []

    async def post(self, path: str, payload: Mapping[str, Any], what: str) -> Any:
        slot_text, _, action = path.removeprefix("/slots/").partition("?action=")
        slot = int(slot_text)
        self.calls.append(f"{action} {slot}")
        if action == "save":
            (self.directory / payload["filename"]).write_bytes(b"k")
        elif action == "erase":
            self.cells.pop(slot, None)
        elif action == "restore":
            self.cells.pop(slot, None)
            if self.capacity - sum(self.cells.values()) < KV:
                raise BackendError("slot restore: No available space in KV cache")
            self.cells[slot] = KV
        return {}


def _backend(tmp: Path, capacity: int) -> tuple[LlamaCppBackend, _FakeLlama]:
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=3,
                           slot_save_path=str(tmp))

    async def make() -> LlamaCppBackend:
        async with aiohttp.ClientSession() as session:
            return LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))

    backend = asyncio.run(make())
    fake = _FakeLlama(tmp, capacity)
    backend._post_json = fake.post  # type: ignore[method-assign]
    return backend, fake


def _serve(backend: LlamaCppBackend, fake: _FakeLlama, workflow: str,
           decision: Retention) -> None:
    """One call of ``workflow``: its slot then holds its KV; then the retention step."""
    async def main() -> None:
        data: dict[str, Any] = {}
        await backend.prepare(workflow, data, {}, None)
        fake.cells[data["id_slot"]] = KV
        backend.finished(workflow)
        await backend.retain(workflow, decision, 0.0)

    asyncio.run(main())


def _fill(tmp: Path, last: Retention) -> tuple[LlamaCppBackend, _FakeLlama]:
    """a and b saved, then c (not saved) and d (``last``): d took a's slot (the least
    recently used), and the 9-cell KV holds b, c and d."""
    backend, fake = _backend(tmp, capacity=9)
    _serve(backend, fake, "a", Retention("offload"))
    _serve(backend, fake, "b", Retention("offload"))
    _serve(backend, fake, "c", Retention("release"))
    fake.cells.pop(1)  # llama.cpp purged idle b to make room for c's prompt
    _serve(backend, fake, "d", last)
    assert [backend.slot_of(w) for w in "abcd"] == [None, 1, 2, 0]
    fake.calls.clear()
    return backend, fake


def test_a_restore_without_room_erases_the_least_recent_idle_saved_slot(
    tmp_path: Path,
) -> None:
    backend, fake = _fill(tmp_path, Retention("offload"))
    # a returns: it takes b's slot (the least recently used); its restore finds 1 cell
    # free of the 4 it needs, so d's slot goes (saved; c's KV is nowhere else), then it fits
    _serve(backend, fake, "a", Retention("offload"))
    assert fake.calls[:3] == ["restore 1", "erase 0", "restore 1"]
    assert [backend.slot_of(w) for w in "abcd"] == [1, None, 2, None]
    assert backend.actions["restore"] == 1 and fake.cells == {1: KV, 2: KV}
    assert backend.failed == {"save": 0, "restore": 1, "erase": 0}  # the first try
    # d lost its slot, not its KV: its next call restores it
    fake.calls.clear()
    _serve(backend, fake, "d", Retention("offload"))
    assert fake.calls[0] == "restore 0"


def test_a_restore_keeps_slots_whose_kv_is_nowhere_else(tmp_path: Path) -> None:
    backend, fake = _fill(tmp_path, Retention("release"))
    _serve(backend, fake, "a", Retention("offload"))
    assert fake.calls[0] == "restore 1"  # failed, and no idle slot of a saved workflow
    assert "erase 0" not in fake.calls and "erase 2" not in fake.calls
    assert [backend.slot_of(w) for w in "acd"] == [1, 2, 0]
    assert backend.actions["restore"] == 0 and backend.failed["restore"] == 1


def test_slot_actions_reach_metrics_by_outcome(tmp_path: Path) -> None:
    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "test-2", "public_metrics": True,
        "backends": [{"url": "http://127.0.0.1:2", "kind": "llamacpp",
                      "slot_save_path": str(tmp_path)}],
    })

    async def main() -> tuple[str, str]:
        gateway = Gateway(config)
        await gateway.start()
        try:
            (backend,) = gateway.backends
            assert isinstance(backend, LlamaCppBackend)
            backend.actions.update(save=5, restore=3, erase=1)
            backend.failed["restore"] = 2
            return backend.label, await render_metrics(gateway)
        finally:
            await gateway.stop()

    name, text = asyncio.run(main())
    lines = text.splitlines()
    samples = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in lines
               if line.startswith("saga_slot_actions_total{")}
    assert len(samples) == 6
    label = 'saga_slot_actions_total{{backend="{}",action="{}",outcome="{}"}}'.format
    assert samples[label(name, "restore", "done")] == "3"
    assert samples[label(name, "restore", "failed")] == "2"
    assert samples[label(name, "save", "done")] == "5"
    assert samples[label(name, "erase", "failed")] == "0"
