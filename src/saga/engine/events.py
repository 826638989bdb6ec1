"""A tiny discrete-event core: a heap of (time, seq, callback, argument).

The counter breaks ties in scheduling order, so a run is deterministic. Time only
moves forward; scheduling into the past is a bug and raises.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Callback = Callable[[Any], None]


class EventLoop:
    """Simulated clock and event heap. ``now`` is the time of the event being run."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0
        self.events_run = 0

    def at(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Run ``callback(arg)`` at ``time`` (not before ``now``)."""
        if time < self.now:
            raise ValueError(f"event scheduled in the past: {time} < {self.now}")
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, callback, arg))

    def after(self, delay: float, callback: Callback, arg: Any = None) -> None:
        self.at(self.now + delay, callback, arg)

    def run(self, until: float | None = None, on_event: Callable[[], None] | None = None) -> None:
        """Run events in time order until the heap is empty (or past ``until``)."""
        heap = self._heap
        pop = heapq.heappop
        while heap:
            if until is not None and heap[0][0] > until:
                self.now = until
                return
            time, _, callback, arg = pop(heap)
            self.now = time
            callback(arg)
            self.events_run += 1
            if on_event is not None and not self.events_run & 1023:
                on_event()

    def pending(self) -> int:
        return len(self._heap)
