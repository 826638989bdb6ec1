"""The llama.cpp backend never holds a replica's calls while the server carries out a
slot action (a save or restore waits there for the batch in progress), and a slot being
saved is the last one taken (saga.gateway.backends.LlamaCppBackend)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from saga.gateway.backends import BackendError, LlamaCppBackend
from saga.gateway.config import BackendConfig
from saga.sched.decisions import Retention


class _SlowLlama:
    """Slot actions that stay at the server until the test lets each one through (as
    llama.cpp's wait for its batch in progress); ``fail`` makes the next one fail."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pending: list[tuple[str, asyncio.Event]] = []
        self.fail = False

    async def post(self, path: str, payload: Mapping[str, Any], what: str) -> Any:
        slot, _, action = path.removeprefix("/slots/").partition("?action=")
        gate = asyncio.Event()
        self.pending.append((f"{action} {slot}", gate))
        await gate.wait()
        if self.fail:
            raise BackendError(f"slot {action} failed")
        if action == "save":
            (self.directory / payload["filename"]).write_bytes(b"k")
        return {}


def _backend(tmp: Path, slots: int = 2) -> tuple[LlamaCppBackend, _SlowLlama]:
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=slots,
                           slot_save_path=str(tmp))

    async def make() -> LlamaCppBackend:
        async with aiohttp.ClientSession() as session:
            return LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))

    backend = asyncio.run(make())
    server = _SlowLlama(tmp)
    backend._post_json = server.post  # type: ignore[method-assign]
    return backend, server


async def _slot_for(backend: LlamaCppBackend, workflow: str) -> int:
    data: dict[str, Any] = {}
    await backend.prepare(workflow, data, {}, None)
    slot: int = data["id_slot"]
    return slot


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_save_at_the_server_holds_no_call(tmp_path: Path) -> None:
    backend, server = _backend(tmp_path)

    async def run() -> None:
        assert await _slot_for(backend, "a") == 0
        backend.finished("a")
        save = asyncio.create_task(backend.retain("a", Retention("offload"), 0.0))
        await _settle()
        assert [name for name, _ in server.pending] == ["save 0"]  # at the server, held
        # meanwhile: another workflow's call and a's own next call go at once
        assert await _slot_for(backend, "b") == 1
        assert await _slot_for(backend, "a") == 0  # its slot: no restore needed
        server.pending[0][1].set()
        await save
        assert backend.actions["save"] == 1 and backend.slot_files()[0] == 1

    asyncio.run(run())


def test_a_restore_at_the_server_holds_no_other_call(tmp_path: Path) -> None:
    backend, server = _backend(tmp_path, slots=1)

    async def run() -> None:
        assert await _slot_for(backend, "a") == 0
        backend.finished("a")
        save = asyncio.create_task(backend.retain("a", Retention("offload"), 0.0))
        await _settle()
        server.pending[0][1].set()
        await save
        assert await _slot_for(backend, "b") == 0  # a loses the only slot
        backend.finished("b")
        a = asyncio.create_task(_slot_for(backend, "a"))  # takes it back: a restore
        await _settle()
        assert [name for name, _ in server.pending][1:] == ["restore 0"]
        assert not a.done()  # the call waits for its own restore...
        backend.forget("b")
        backend.sweep()  # ...while the backend's bookkeeping goes on (no lock held)
        server.pending[1][1].set()
        assert await a == 0 and backend.actions["restore"] == 1

    asyncio.run(run())


def test_a_slot_being_saved_is_taken_last(tmp_path: Path) -> None:
    backend, server = _backend(tmp_path)

    async def run() -> None:
        for workflow in "ab":
            await _slot_for(backend, workflow)
            backend.finished(workflow)
        # a is the least recently used; its save is still at the server
        save = asyncio.create_task(backend.retain("a", Retention("offload"), 0.0))
        await _settle()
        assert await _slot_for(backend, "c") == 1  # b's slot, not a's, being saved
        assert backend.slot_of("a") == 0 and backend.slot_of("b") is None
        server.pending[0][1].set()
        await save

    asyncio.run(run())


def test_a_failed_save_leaves_nothing_to_restore(tmp_path: Path) -> None:
    backend, server = _backend(tmp_path, slots=1)

    async def run() -> None:
        await _slot_for(backend, "a")
        backend.finished("a")
        server.fail = True
        save = asyncio.create_task(backend.retain("a", Retention("offload"), 0.0))
        await _settle()
        server.pending[0][1].set()
        with pytest.raises(BackendError):
            await save
        await _slot_for(backend, "b")
        backend.finished("b")
        assert await _slot_for(backend, "a") == 0
        assert [name for name, _ in server.pending] == ["save 0"]  # no restore asked

    asyncio.run(run())


def test_a_call_cancelled_during_its_restore_frees_its_slot(tmp_path: Path) -> None:
    backend, server = _backend(tmp_path, slots=1)

    async def run() -> None:
        await _slot_for(backend, "a")
        backend.finished("a")
        save = asyncio.create_task(backend.retain("a", Retention("offload"), 0.0))
        await _settle()
        server.pending[0][1].set()
        await save
        await _slot_for(backend, "b")
        backend.finished("b")
        a = asyncio.create_task(_slot_for(backend, "a"))
        await _settle()
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert backend.busy == [0]

    asyncio.run(run())
