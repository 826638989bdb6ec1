"""Timers a replica asks its runtime for: pin expiry and host-tier prefetch.

The simulator and the emulator drive replicas the same way; this mixin is the one
place that turns a replica's new pins and prefetches into events on the runtime's
loop (simulated or real time).
"""

from __future__ import annotations

from saga.engine.events import EventLoop
from saga.engine.kvcache import Run
from saga.engine.replica import Pin, Replica


class ReplicaTimers:
    """Mixin for a runtime with ``loop`` and ``_kick(replica)``."""

    loop: EventLoop

    def _kick(self, replica: Replica) -> None:
        """Let ``replica`` plan again (the runtime defines how)."""
        raise TypeError(f"{type(self).__name__} must define _kick")

    def _schedule_replica_timers(self, replica: Replica) -> None:
        """Turn the replica's new pins and prefetches into events."""
        for workflow, pin in replica.new_pins:
            self.loop.at(pin.expires, self._pin_expired, (replica, workflow, pin))
        replica.new_pins.clear()
        for when, runs in replica.new_prefetches:
            self.loop.at(when, self._prefetch, (replica, runs))
        replica.new_prefetches.clear()

    def _prefetch(self, item: tuple[Replica, tuple[Run, ...]]) -> None:
        replica, runs = item
        replica.prefetch(runs, self.loop.now)

    def _pin_expired(self, item: tuple[Replica, str, Pin]) -> None:
        replica, workflow, pin = item
        if replica.pins.get(workflow) is pin:  # not consumed or replaced meanwhile
            replica.unpin(workflow, self.loop.now)
            if replica.waiting:
                self._kick(replica)
