"""The simulator's event loop on a real clock, as SimPy's ``RealtimeEnvironment``.

Only waiting changes: an event at model time ``t`` runs when the wall clock reaches
``origin + t / time_scale``. Events that run late keep their own time (the model
stays exact while the process keeps up); events from outside (an HTTP request)
call :meth:`RealtimeEventLoop.sync` first, which moves ``now`` to the wall clock, or
to the earliest event still due when the loop runs late.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable
from typing import Any

from saga.engine.events import Callback, EventLoop


class RealtimeEventLoop(EventLoop):
    """An :class:`EventLoop` whose events run at their time on the (scaled) wall clock.

    ``time_scale`` is model seconds per wall second: 10 runs the model ten times
    faster than real time (for tests). ``clock`` is injected (monotonic seconds).
    """

    def __init__(
        self, time_scale: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        super().__init__(0.0)
        self.time_scale = time_scale
        self._clock = clock
        self._origin = clock()
        self._wake: asyncio.Event | None = None
        self.late_events = 0
        self.max_lateness = 0.0

    def clock_now(self) -> float:
        """Model time on the wall clock."""
        return (self._clock() - self._origin) * self.time_scale

    def sync(self) -> float:
        """Bring ``now`` up to the wall clock (before handling an outside event), but not
        past an event already due: a loop running late (a starved process) would run that
        event at the outside event's time instead of its own, so its lateness would enter
        the model (a call's modelled latency grew with the machine's load)."""
        t = self.clock_now()
        heap = self._heap
        if heap and heap[0][0] < t:
            t = heap[0][0]
        if t > self.now:
            self.now = t
        return self.now

    def at(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Schedule ``callback(arg)`` at ``time``; a time already past runs at once."""
        super().at(max(time, self.now), callback, arg)
        if self._wake is not None:
            self._wake.set()

    async def run_realtime(self) -> None:
        """Run events at their wall-clock times, forever (cancel the task to stop)."""
        self._wake = asyncio.Event()
        heap = self._heap
        while True:
            if not heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = heap[0][0]
            delay = (due - self.clock_now()) / self.time_scale
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
            if delay < -0.005:
                self.late_events += 1
            self.max_lateness = max(self.max_lateness, -delay)
            # Run every event already due, then let the server breathe.
            horizon = self.clock_now()
            ran = 0
            while heap and heap[0][0] <= horizon and ran < 256:
                time_, _, callback, arg = heapq.heappop(heap)
                if time_ > self.now:
                    self.now = time_
                callback(arg)
                self.events_run += 1
                ran += 1
            await asyncio.sleep(0)
