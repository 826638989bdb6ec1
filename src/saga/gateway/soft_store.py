"""Store operations on the call path that fail soft: a store that is down or hung costs the
gateway its shared state (sessions, homes, tenant tokens), never a call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from saga.gateway.metrics import Metrics

log = logging.getLogger("saga.gateway")
_T = TypeVar("_T")
#: Seconds a failed store is left alone before the call path tries it again.
_STORE_RETRY = 1.0


class SoftStore:
    """Runs store operations for the call path and the ``/metrics`` page; ``now`` is the
    gateway's clock."""

    def __init__(self, metrics: Metrics, now: Callable[[], float]) -> None:
        self._metrics = metrics
        self._now = now
        self._down = False
        self._retry_at = 0.0
        self._logged_at = -1e9

    @property
    def down(self) -> bool:
        """Whether the last store operation on the call path failed."""
        return self._down

    async def op(self, op: str, coro: Coroutine[Any, Any, _T]) -> _T | None:
        """A store operation on the call path; if the store fails (down, hung: its
        commands time out), None, counted and logged (once per 30 s at most), so that calls go
        on without shared state rather than fail. After a failure the operations of the
        next second are skipped (counted), then one is tried again: a hung store costs
        one timeout a second, not one per call."""
        now = self._now()
        if self._down and now < self._retry_at:
            coro.close()
            self._metrics.store_skipped[op] += 1
            return None
        try:
            result = await coro
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._metrics.store_errors[op] += 1
            self._retry_at = self._now() + _STORE_RETRY
            if not self._down:
                self._down = True
                if self._now() - self._logged_at >= 30.0:  # a flapping store: rarely
                    self._logged_at = self._now()
                    log.warning("store unavailable (%s: %s); serving without shared state",
                                op, type(error).__name__)
            return None
        if self._down:
            self._down = False
        return result
