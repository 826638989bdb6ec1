"""A tiny discrete-event core: a heap of (time, seq, callback, argument).

The counter breaks ties in scheduling order, so a run is deterministic. Time only
moves forward; scheduling into the past is a bug and raises. *Background* events
(:meth:`EventLoop.at_background`) run in order like the others but do not keep the loop
alive: once only background events remain, the run is over (a gateway's idle-timeout
sweep, say, happens only while something else still does). :meth:`EventLoop.halt` ends a
run early: what was pending never runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr

Callback = Callable[[Any], None]


# Compiled (saga.compiled); the emulator's real-time loop subclasses it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class EventLoop:
    """Simulated clock and event heap. ``now`` is the time of the event being run."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0
        self.events_run = 0
        self._background: set[int] = set()  # seqs of the background events pending
        self.halted = False  # halt() ended the run before its events ran out

    def at(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Run ``callback(arg)`` at ``time`` (not before ``now``)."""
        if time < self.now:
            raise ValueError(f"event scheduled in the past: {time} < {self.now}")
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, callback, arg))

    def at_background(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Like :meth:`at`, but the event does not keep the loop alive (module docstring)."""
        self.at(time, callback, arg)
        self._background.add(self._seq)

    def after(self, delay: float, callback: Callback, arg: Any = None) -> None:
        self.at(self.now + delay, callback, arg)

    def run(self, until: float | None = None, on_event: Callable[[], None] | None = None) -> None:
        """Run events in time order until the heap is empty (or past ``until``)."""
        if self.halted:
            return
        heap = self._heap
        pop = heapq.heappop
        background = self._background
        while len(heap) > len(background):
            if until is not None and heap[0][0] > until:
                self.now = until
                return
            time, seq, callback, arg = pop(heap)
            if background:
                background.discard(seq)
            self.now = time
            callback(arg)
            self.events_run += 1
            if on_event is not None and not self.events_run & 1023:
                on_event()

    def halt(self) -> None:
        """End the run after the current event: every pending event is dropped, and so is
        what the current event still schedules (it goes to a heap no run reads: a halted
        loop never runs again). It costs the loop nothing per event."""
        self._heap.clear()
        self._background.clear()
        self._heap, self._background = [], set()
        self.halted = True

    def pending(self) -> int:
        """Events still to run that keep the loop alive (background ones are not counted)."""
        return len(self._heap) - len(self._background)
