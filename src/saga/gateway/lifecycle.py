"""A gateway's life: start (the store answers, the backends are built and checked), the
background tasks while it runs (health checks, the idle-workflow sweep, graph sync, and the
tasks the call pipeline leaves behind), and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp

from saga.errors import UserError
from saga.gateway.backends import build_backend
from saga.gateway.store import MemoryStore

if TYPE_CHECKING:
    from saga.gateway.app import Gateway


class Lifecycle:
    """Starts and stops one gateway and owns its background tasks."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._failed_checks = [0] * len(gateway.config.backends)

    async def start(self) -> None:
        gw = self._gw
        config = gw.config
        try:
            await gw.store.ping()
        except Exception as error:
            raise UserError(f"store {config.store.url} unreachable: {error}") from None
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        timeout = aiohttp.ClientTimeout(
            total=config.request_timeout, connect=config.connect_timeout
        )
        gw.backends = [
            build_backend(i, b, self._session, timeout) for i, b in enumerate(config.backends)
        ]
        for backend in gw.backends:
            backend.sweep()  # files an earlier run left (llama.cpp slot saves)
        await self.check_health(first=True)
        self.spawn(self._health_loop())
        self.spawn(self._sweep_loop())
        if gw.graph_sync.enabled:
            self.spawn(gw.graph_sync.loop())

    async def stop(self) -> None:
        gw = self._gw
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if gw.graph_sync.enabled:  # what was learned since the last exchange, if it answers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gw.graph_sync.publish(), 2.0)
        for backend in gw.backends:
            backend.close()
        if self._session is not None:
            await self._session.close()
        await gw.store.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background until it ends or the gateway stops."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def check_health(self, first: bool = False) -> None:
        """A passed check marks a backend up; it is marked down after two failed checks
        in a row (one slow answer on a loaded machine is not an outage; at start, one),
        or at once by a call it failed (:func:`~saga.gateway.relay.forward`)."""
        gw = self._gw
        results = await asyncio.gather(*(b.healthy() for b in gw.backends))
        for i, (view, ok) in enumerate(zip(gw.views, results, strict=True)):
            self._failed_checks[i] = 0 if ok else self._failed_checks[i] + 1
            if ok or first or self._failed_checks[i] >= 2:
                view.up = ok

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._gw.config.health_interval)
            await self.check_health()

    async def _sweep_loop(self) -> None:
        """End the workflows idle for ``workflow_idle_timeout`` (no end marker came)."""
        gw = self._gw
        idle = gw.config.workflow_idle_timeout
        while True:
            await asyncio.sleep(min(idle / 4, 10.0))
            gw.pipeline.end_idle(gw.now(), idle)
            if isinstance(gw.store, MemoryStore):
                gw.store.expire()
