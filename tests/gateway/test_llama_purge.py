"""The gateway follows llama.cpp's purge of idle slots (saga.gateway.llama_purge) and
restores a saved workflow whose own slot the server purged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from saga.gateway.backends import BackendError, LlamaCppBackend
from saga.gateway.config import BackendConfig
from saga.gateway.llama_purge import SlotPurges
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo


def test_idle_slots_go_lowest_first_until_the_call_fits() -> None:
    purges = SlotPurges(4, kv_tokens=100)
    busy = [0, 0, 0, 0]
    assert purges.charge(2, 40, busy) == [] and purges.charge(1, 30, busy) == []
    assert purges.charge(3, 30, busy) == []  # 100 of 100
    busy[3] = 1
    # slot 0 gets 50: 150 > 100; slot 1 goes (the lowest idle), then 2; 3 runs
    assert purges.charge(0, 50, busy) == [1, 2]
    assert purges.held == [50, 0, 0, 30] and purges.purged == [False, True, True, False]
    assert purges.count == 2
    purges.charge(1, 10, busy)  # its next call refills it
    assert purges.purged[1] is False and purges.held[1] == 10
    purges.emptied(2)
    assert purges.purged[2] is False and purges.held[2] == 0


def test_running_calls_are_never_purged_and_zero_follows_nothing() -> None:
    purges = SlotPurges(2, kv_tokens=10)
    assert purges.charge(0, 8, [1, 0]) == [] and purges.charge(1, 8, [1, 1]) == []
    assert purges.purged == [False, False]  # only running calls: no purge, the server fails
    off = SlotPurges(2, kv_tokens=0)
    assert off.charge(0, 10**9, [0, 0]) == [] and off.charge(1, 10**9, [0, 0]) == []
    assert off.count == 0


class _Server:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.calls: list[str] = []

    async def post(self, path: str, payload: Mapping[str, Any], what: str) -> Any:
        slot, _, action = path.removeprefix("/slots/").partition("?action=")
        self.calls.append(f"{action} {slot}")
        if action == "save":
            (self.directory / payload["filename"]).write_bytes(b"k")
        return {}


def _info(workflow: str, prompt: int) -> CallInfo:
    return CallInfo(workflow=workflow, tenant="default", agent="a", call_id="0", index=0,
                    tool=None, prompt_tokens=prompt, runs=(), issued_at=0.0,
                    workflow_arrival=0.0, slo=None, ends_workflow=False)


def test_a_saved_workflow_whose_slot_was_purged_restores_it(tmp_path: Path) -> None:
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=3,
                           slot_save_path=str(tmp_path), kv_tokens=1000)

    async def run() -> tuple[LlamaCppBackend, _Server]:
        async with aiohttp.ClientSession() as session:
            backend = LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))
        server = _Server(tmp_path)
        backend._post_json = server.post  # type: ignore[method-assign]

        async def call(workflow: str, prompt: int, decision: str) -> None:
            data: dict[str, Any] = {"max_tokens": 32}
            await backend.prepare(workflow, data, {}, None, _info(workflow, prompt))
            backend.finished(workflow)
            await backend.retain(workflow, Retention(decision), 0.0)

        await call("a", 400, "offload")  # slot 0
        await call("b", 400, "release")  # slot 1
        await call("c", 400, "offload")  # slot 2: 1,296 > 1,000, so the server purges 0
        assert backend.purges.purged == [True, False, False]
        server.calls.clear()
        await call("a", 420, "offload")  # a's slot is its own, its KV gone: restore
        assert server.calls[0] == "restore 0" and backend.purge_restores == 1
        # a's call purged b's slot (1): b saved nothing, so it recomputes, no restore
        assert backend.purges.purged == [False, True, False]
        await call("b", 420, "release")
        assert server.calls == ["restore 0", "save 0"]
        return backend, server

    backend, _ = asyncio.run(run())
    assert backend.actions["restore"] == 1


def test_without_kv_tokens_or_restore_kept_an_own_slot_is_never_restored(
    tmp_path: Path,
) -> None:
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=1,
                           slot_save_path=str(tmp_path), restore_kept=False)

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:
            backend = LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))
        server = _Server(tmp_path)
        backend._post_json = server.post  # type: ignore[method-assign]
        for _ in range(2):
            data: dict[str, Any] = {"max_tokens": 32}
            await backend.prepare("a", data, {}, None, _info("a", 10**6))
            backend.finished("a")
            await backend.retain("a", Retention("offload"), 0.0)
        return server.calls

    assert asyncio.run(run()) == ["save 0", "save 0"]


def _calls(config: BackendConfig, tmp_path: Path,
           sequence: list[tuple[str, str]]) -> tuple[LlamaCppBackend, list[str]]:
    """Each (workflow, decision) of ``sequence`` one call then its retention; the slot
    actions the server was asked for."""

    async def run() -> tuple[LlamaCppBackend, list[str]]:
        async with aiohttp.ClientSession() as session:
            backend = LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))
        server = _Server(tmp_path)
        backend._post_json = server.post  # type: ignore[method-assign]
        for workflow, decision in sequence:
            data: dict[str, Any] = {"max_tokens": 32}
            await backend.prepare(workflow, data, {}, None, _info(workflow, 100))
            backend.finished(workflow)
            await backend.retain(workflow, Retention(decision), 0.0)
        return backend, server.calls

    return asyncio.run(run())


def _kept(tmp_path: Path,
          sequence: list[tuple[str, str]]) -> tuple[LlamaCppBackend, list[str]]:
    """:func:`_calls` on a 2-slot backend with ``restore_kept``."""
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=2,
                           slot_save_path=str(tmp_path), restore_kept=True)
    return _calls(config, tmp_path, sequence)


def test_a_save_holding_all_the_kv_is_restored_though_the_slot_looks_kept(
    tmp_path: Path,
) -> None:
    # the purge rule sees room (kv_tokens 0: not followed), yet the server may have
    # purged the slot unseen: the fresh save goes back in first, before each call
    backend, calls = _kept(tmp_path, [("a", "offload"), ("a", "offload"), ("a", "offload")])
    assert calls == ["save 0", "restore 0", "save 0", "restore 0", "save 0"]
    assert backend.kept_restores == 2 and backend.purge_restores == 0


def test_a_save_older_than_the_last_call_is_not_restored_into_a_kept_slot(
    tmp_path: Path,
) -> None:
    # a pinned call after the save: the slot holds more than the save, so it stays
    backend, calls = _kept(tmp_path, [("a", "offload"), ("a", "pin"), ("a", "offload")])
    assert calls == ["save 0", "restore 0", "save 0"]
    assert backend.kept_restores == 1


def test_a_failed_save_is_never_restored(tmp_path: Path) -> None:
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=1,
                           slot_save_path=str(tmp_path), restore_kept=True)

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:
            backend = LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))
        calls: list[str] = []

        async def post(path: str, payload: Mapping[str, Any], what: str) -> Any:
            action = path.partition("?action=")[2]
            calls.append(action)
            if action == "save":
                raise BackendError("save refused")
            return {}

        backend._post_json = post  # type: ignore[method-assign]
        for _ in range(2):
            await backend.prepare("a", {"max_tokens": 32}, {}, None, _info("a", 100))
            backend.finished("a")
            with contextlib.suppress(BackendError):
                await backend.retain("a", Retention("offload"), 0.0)
        return calls

    assert asyncio.run(run()) == ["save", "save"]
