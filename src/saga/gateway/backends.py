"""Backends behind one small interface: send a call, check health, carry out retention.

:class:`Backend` speaks OpenAI HTTP to any compatible server (vLLM, SGLang,
llama.cpp server). :class:`EmulatorBackend` also passes the scheduler's priority as
a header and carries out retention decisions through the emulator's KV control API.
"""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from saga.gateway.config import BackendConfig
from saga.sched.decisions import Retention


class BackendError(Exception):
    """The backend could not be reached or failed; the gateway answers 502/504."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Backend:
    """An OpenAI-compatible server. One keep-alive connection pool is shared by all."""

    kind: ClassVar[str] = "openai"
    #: Whether the backend reads x-saga-priority and offers the KV control API.
    understands_hints: ClassVar[bool] = False

    def __init__(
        self, index: int, config: BackendConfig, session: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.index = index
        self.config = config
        self.url = config.url
        self.label = config.label
        self.max_concurrency = config.max_concurrency
        self._session = session
        self._timeout = timeout
        self._health_timeout = aiohttp.ClientTimeout(total=2.0)

    async def send(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """POST ``body`` to ``path``; the caller reads and releases the response."""
        try:
            return await self._session.post(
                self.url + path, data=body, headers=headers, timeout=self._timeout
            )
        except TimeoutError:
            raise BackendError(f"backend {self.label} timed out", timeout=True) from None
        except aiohttp.ClientError as error:
            raise BackendError(f"backend {self.label} unreachable: {error}") from None

    async def healthy(self) -> bool:
        try:
            async with self._session.get(
                self.url + "/health", timeout=self._health_timeout
            ) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        """Carry out a retention decision (a generic server has no way: nothing)."""


class EmulatorBackend(Backend):
    """SAGA's emulator: priorities as a header, retention through ``/saga/kv/*``."""

    kind = "emulator"
    understands_hints = True

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        """``now`` is the gateway's clock, the one ``decision.prefetch_at`` is on."""
        payload: dict[str, object] = {"workflow": workflow}
        if decision.kind == "release":
            return
        if decision.kind == "pin":
            payload["ttl"] = decision.ttl
        elif decision.kind == "offload" and decision.prefetch_at is not None:
            payload["prefetch_after"] = max(0.0, decision.prefetch_at - now)
        verb = decision.kind
        try:
            async with self._session.post(
                f"{self.url}/saga/kv/{verb}", json=payload, timeout=self._health_timeout
            ) as response:
                if response.status != 200:
                    raise BackendError(
                        f"backend {self.label}: KV {verb} answered {response.status}"
                    )
        except (TimeoutError, aiohttp.ClientError) as error:
            raise BackendError(f"backend {self.label}: KV {verb} failed: {error}") from None


BACKENDS: dict[str, type[Backend]] = {"openai": Backend, "emulator": EmulatorBackend}


def build_backend(
    index: int, config: BackendConfig, session: aiohttp.ClientSession,
    timeout: aiohttp.ClientTimeout,
) -> Backend:
    return BACKENDS[config.kind](index, config, session, timeout)
