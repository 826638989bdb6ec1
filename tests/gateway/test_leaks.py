"""No slow leaks: Redis timeouts and reconnects, the store bounded by count, llama.cpp
slot files deleted, retries placed away from the backend that failed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from inproc import Get, Post, chat, fake_openai
from saga_procs import HOST, free_ports, redis_on

from saga.gateway.backends import LlamaCppBackend, slot_file
from saga.gateway.config import BackendConfig, GatewayConfig
from saga.gateway.server import Response
from saga.gateway.store import MemoryStore, RedisStore
from saga.sched.decisions import Retention

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server not installed")


# ---- Redis: timeouts and reconnects ---------------------------------------------------------


@needs_redis
@pytest.mark.timeout(60)
def test_a_hung_redis_fails_fast_and_a_restarted_one_is_used_again() -> None:
    port = free_ports(1)

    async def main() -> list[str]:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        events = []
        store = RedisStore(f"redis://{HOST}:{port}/0", socket_timeout=0.3, connect_timeout=0.3)
        try:
            with redis_on(port) as proc:
                await store.set_home("w", 1, ttl=60)
                events.append(f"home {(await store.session('w')).home}")
                os.kill(proc.pid, signal.SIGSTOP)  # hung: accepts, never answers
                try:
                    # the bound only stops a broken test; the store must fail on its own
                    await asyncio.wait_for(store.session("w"), 20)
                except (RedisTimeout, RedisConnectionError) as error:
                    events.append(f"hung: {type(error).__name__}")
                os.kill(proc.pid, signal.SIGCONT)
                events.append(f"resumed home {(await store.session('w')).home}")
            try:  # down: refused at once
                await asyncio.wait_for(store.session("w"), 20)
            except RedisConnectionError:
                events.append("down: ConnectionError")
            with redis_on(port):  # a new, empty Redis on the same address
                await store.set_home("w", 2, ttl=60)
                events.append(f"restarted home {(await store.session('w')).home}")
        finally:
            await store.close()
        return events

    assert asyncio.run(main()) == [
        "home 1", "hung: TimeoutError", "resumed home 1", "down: ConnectionError",
        "restarted home 2"]


# ---- the store bounded by count ---------------------------------------------------------------


def test_memory_store_evicts_the_oldest_sessions_beyond_max_sessions() -> None:
    async def main() -> tuple[list[int | None], int, int]:
        store = MemoryStore(max_sessions=3)
        for i in range(5):
            await store.set_home(f"w{i}", i, ttl=60)
            await store.mark_admitted(f"w{i}", ttl=60)
        await store.set_home("w2", 9, ttl=60)  # written again: now the newest
        await store.set_home("w5", 5, ttl=60)
        homes = [(await store.session(f"w{i}")).home for i in range(6)]
        return homes, store.evicted, await store.session_count()

    homes, evicted, count = asyncio.run(main())
    assert homes == [None, None, 9, None, 4, 5]
    assert evicted == 3 and count == 3


@needs_redis
@pytest.mark.timeout(60)
def test_redis_store_evicts_the_oldest_sessions_beyond_max_sessions() -> None:
    port = free_ports(1)

    async def main() -> tuple[list[int | None], list[bool], int, int, int]:
        store = RedisStore(f"redis://{HOST}:{port}/0", max_sessions=3)
        try:
            for i in range(5):
                await store.set_home(f"w{i}", i, ttl=60)
                await store.mark_admitted(f"w{i}", ttl=60)
                await asyncio.sleep(0.01)  # distinct write times
            await store.set_home("w0", 7, ttl=60)  # written again: now the newest
            sessions = [await store.session(f"w{i}") for i in range(5)]
            keys = await store._redis.dbsize()
            evicted = store.evicted
            await store._redis.flushdb()
            # sessions whose TTL passed leave the index at the next write (same TTL)
            await store.set_home("short", 1, ttl=0.05)
            await asyncio.sleep(0.2)
            await store.set_home("later", 1, ttl=0.05)
            return ([s.home for s in sessions], [s.admitted for s in sessions], evicted,
                    keys, await store.session_count())
        finally:
            await store.close()

    with redis_on(port):
        homes, admitted, evicted, keys, count = asyncio.run(main())
    assert homes == [7, None, None, 3, 4]  # w0 was evicted, then written again
    assert admitted == [False, False, False, True, True]  # w0's admission went with it
    assert evicted == 3  # w0, w1, w2 (the oldest each time)
    assert keys == 2 + 2 + 1 + 1  # w3, w4 (home, admitted), w0's home, the index
    assert count == 1


# ---- llama.cpp slot files ---------------------------------------------------------------------


class _FakeLlama:
    """What llama.cpp's server does with slot actions: save writes the file."""

    def __init__(self, directory: Path, size: int = 1000) -> None:
        self.directory = directory
        self.size = size
        self.calls: list[str] = []

    async def post(self, path: str, payload: Mapping[str, Any], what: str) -> Any:
        slot, _, action = path.removeprefix("/slots/").partition("?action=")
        self.calls.append(f"{action} {slot}")
        if action == "save":
            (self.directory / payload["filename"]).write_bytes(b"k" * self.size)
        return {}


def _llama(tmp: Path, budget: int = 10**9, slots: int = 2) -> tuple[LlamaCppBackend, _FakeLlama]:
    config = BackendConfig(url="http://127.0.0.1:1", kind="llamacpp", slots=slots,
                           slot_save_path=str(tmp), slot_save_budget=budget)

    async def make() -> LlamaCppBackend:
        async with aiohttp.ClientSession() as session:
            return LlamaCppBackend(0, config, session, aiohttp.ClientTimeout(total=5))

    backend = asyncio.run(make())
    fake = _FakeLlama(tmp)
    backend._post_json = fake.post  # type: ignore[method-assign]
    return backend, fake


def _serve(backend: LlamaCppBackend, workflow: str, decision: Retention) -> None:
    async def main() -> None:
        data: dict[str, Any] = {}
        await backend.prepare(workflow, data, {}, None)
        backend.finished(workflow)
        await backend.retain(workflow, decision, 0.0)

    asyncio.run(main())


def test_slot_files_go_on_drop_and_at_the_workflows_end(tmp_path: Path) -> None:
    backend, _ = _llama(tmp_path)
    _serve(backend, "t/a", Retention("offload"))
    _serve(backend, "t/b", Retention("offload"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [slot_file("t/a"), slot_file("t/b")])
    assert backend.slot_files() == (2, 2000)
    _serve(backend, "t/a", Retention("drop"))
    backend.forget("t/b")
    assert list(tmp_path.iterdir()) == []
    assert backend.deleted == {"drop": 1, "end": 1, "sweep": 0, "budget": 0}
    assert backend.slot_of("t/b") is None  # its slot is free for another workflow


def test_the_start_up_sweep_removes_only_saved_slots(tmp_path: Path) -> None:
    (tmp_path / "saga-0123.bin").write_bytes(b"x")
    (tmp_path / "saga-4567.bin").write_bytes(b"x")
    (tmp_path / "model.gguf").write_bytes(b"x")
    backend, _ = _llama(tmp_path)
    backend.sweep()
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
    assert backend.deleted["sweep"] == 2


def test_slot_files_stay_within_the_disk_budget(tmp_path: Path) -> None:
    backend, fake = _llama(tmp_path, budget=2500, slots=1)
    for w in ("a", "b", "c", "d"):
        _serve(backend, w, Retention("offload"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([slot_file("c"), slot_file("d")])
    assert backend.deleted["budget"] == 2
    fake.calls.clear()
    _serve(backend, "a", Retention("release"))  # its save was deleted: nothing to restore
    _serve(backend, "c", Retention("release"))  # still saved: restored into the slot
    assert fake.calls == ["restore 0"]


# ---- retries go elsewhere -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_retry_is_not_placed_on_the_backend_that_failed() -> None:
    import saga_test_policies  # noqa: F401 (registers test-first-up)

    from saga.gateway.app import Gateway

    async def main() -> list[tuple[int, str, str]]:
        hits = [0, 0]

        def counter(index: int) -> Callable[[], None]:
            def count() -> None:
                hits[index] += 1
            return count

        runners, urls = [], []
        for i, status in enumerate((500, 200)):
            runner, url = await fake_openai(HOST, status, counter(i))
            runners.append(runner)
            urls.append(url)
        config = GatewayConfig.model_validate({
            "policy": "test-first-up", "cluster": "test-2", "retries": 1,
            "retry_backoff": 0.0, "backends": [{"url": u, "kind": "openai"} for u in urls]})
        gateway = Gateway(config)
        await gateway.start()
        out = []
        try:
            for w in range(3):
                response = await gateway.handle(
                    Post("/v1/chat/completions", chat(f"call {w}")))  # type: ignore[arg-type]
                assert isinstance(response, Response)
                headers = dict(response.headers or {})
                out.append((response.status, headers.get("x-saga-backend", ""),
                            headers.get("x-saga-retries", "")))
        finally:
            await gateway.stop()
            for runner in runners:
                await runner.cleanup()
        assert hits == [3, 3]
        return out

    assert asyncio.run(main()) == [(200, "1", "1")] * 3


@needs_redis
@pytest.mark.timeout(90)
def test_calls_go_on_while_redis_is_down_and_use_it_again_once_back() -> None:
    from aiohttp import web

    from saga.emulator.engine import Emulator
    from saga.emulator.server import build_app
    from saga.engine.cluster import get_cluster
    from saga.gateway.app import Gateway

    port = free_ports(1)

    async def main() -> list[Any]:
        emulator = Emulator(get_cluster("test-2"), 1, time_scale=50.0)
        clock = asyncio.create_task(emulator.loop.run_realtime())
        runner = web.AppRunner(build_app(emulator, 0), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        config = GatewayConfig.model_validate({
            "policy": "saga", "cluster": "test-2", "public_metrics": True,
            "store": {"kind": "redis", "url": f"redis://{HOST}:{port}/0",
                      "socket_timeout": 0.3, "connect_timeout": 0.3},
            "backends": [{"url": f"http://{HOST}:{runner.addresses[0][1]}"}]})
        out: list[Any] = []

        async def call(w: str) -> int:
            response = await gateway.handle(Post(  # type: ignore[arg-type]
                "/v1/chat/completions", chat(w), {"x-saga-workflow": w}))
            return response.status

        try:
            with redis_on(port):
                gateway = Gateway(config)
                await gateway.start()
                out.append(await call("a"))
            out.append([await call(w) for w in ("b", "c")])  # Redis is down
            metrics = await gateway.handle(Get("/metrics"))  # type: ignore[arg-type]
            text = metrics.body.decode()  # type: ignore[union-attr]
            out.append(sorted(line for line in text.splitlines()
                              if line.startswith(("saga_store_errors_total",
                                                  "saga_store_skipped_total",
                                                  "saga_store_up"))))
            with redis_on(port):
                await asyncio.sleep(1.1)  # past the second in which a failed store is skipped
                out.append(await call("d"))
                session = await gateway.store.session("default/d")
                out.append(session.home is not None and session.admitted)
            await gateway.stop()
        finally:
            clock.cancel()
            await asyncio.gather(clock, return_exceptions=True)
            await runner.cleanup()
        return out

    got = asyncio.run(main())
    assert got[:2] == [200, [200, 200]]
    store = dict(line.rsplit(" ", 1) for line in got[2])
    # the first failure, then the operations of the next second are skipped, not tried
    assert store['saga_store_errors_total{op="session"}'] == "1"
    assert store['saga_store_skipped_total{op="admitted"}'] == "2"
    assert store['saga_store_skipped_total{op="session"}'] == "1"
    assert store["saga_store_up"] == "0"
    assert got[3:] == [200, True]


@pytest.mark.timeout(90)
def test_calls_queued_while_the_store_suspends_keep_their_own_sequence_numbers() -> None:
    """Found by the soak: a call read the gateway's sequence counter after awaiting the
    store, so two queued calls could share a number and tie in the fair queue (a 500)."""
    from aiohttp import web

    from saga.emulator.engine import Emulator
    from saga.emulator.server import build_app
    from saga.engine.cluster import get_cluster
    from saga.gateway.app import Gateway

    class SuspendingStore(MemoryStore):
        async def set_home(self, workflow: str, replica: int, ttl: float) -> None:
            await asyncio.sleep(0)  # as Redis does: other calls run meanwhile
            await super().set_home(workflow, replica, ttl)

    async def main() -> list[int]:
        emulator = Emulator(get_cluster("test-2"), 1, time_scale=50.0)
        clock = asyncio.create_task(emulator.loop.run_realtime())
        runner = web.AppRunner(build_app(emulator, 0), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        config = GatewayConfig.model_validate({
            "policy": "vllm-least-loaded", "cluster": "test-2",
            "tenants": {"a": {"keys": ["ka"]}, "b": {"keys": ["kb"]}},
            "backends": [{"url": f"http://{HOST}:{runner.addresses[0][1]}",
                          "max_concurrency": 1}]})
        gateway = Gateway(config, store=SuspendingStore())
        await gateway.start()
        try:
            calls = [gateway.handle(Post(  # type: ignore[arg-type]
                "/v1/chat/completions", chat(f"w{i}"),
                {"authorization": f"Bearer k{'ab'[i % 2]}", "x-saga-workflow": f"w{i}"}))
                for i in range(40)]
            return [r.status for r in await asyncio.gather(*calls)]
        finally:
            await gateway.stop()
            clock.cancel()
            await asyncio.gather(clock, return_exceptions=True)
            await runner.cleanup()

    assert asyncio.run(main()) == [200] * 40
