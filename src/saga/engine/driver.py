"""The stepping loop that drives engine-model replicas on an event loop.

The simulator (simulated time) and the emulator (real time) drive their replicas the same
way, and this is the one copy: a replica with work plans a step (:meth:`Replica.plan`),
the step ends at the instant it returns (:meth:`Replica.complete`), calls that finished
are handed to the runtime, and the replica plans again. New work for a busy replica cuts
its step short (:meth:`Replica.interrupt`) so the next step sees it; pins expire and
host-tier prefetches land as timed events.

A runtime subclasses :class:`ReplicaDriver` and says what a finished call means to it
(:meth:`ReplicaDriver._call_done`); the emulator also watches each step and plan (it
streams tokens and cuts long decode runs for streaming clients).
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from saga.engine.events import EventLoop
from saga.engine.kvcache import Run
from saga.engine.replica import Pin, Replica, Request


# Compiled (saga.compiled); the emulator and tests subclass it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class ReplicaDriver:
    """Steps ``count`` replicas (the runtime's ``replicas``, indexed as they are) on
    ``loop``."""

    def __init__(self, loop: EventLoop, count: int) -> None:
        self.loop = loop
        self._kick_pending = [False] * count

    # ---- what a runtime defines ------------------------------------------------------------
    def _call_done(self, replica: Replica, request: Request) -> None:
        """``request`` finished on ``replica`` at ``self.loop.now``."""
        raise TypeError(f"{type(self).__name__} must define _call_done")

    def _stepped(self, replica: Replica) -> None:
        """A step ended (before its finished calls are handed over); nothing by default."""

    def _planned(self, replica: Replica, now: float, end: float) -> None:
        """``replica`` planned a step from ``now`` to ``end``; nothing by default."""

    # ---- the loop ----------------------------------------------------------------------------
    def _kick(self, replica: Replica) -> None:
        """Let the replica plan soon: after every event at this instant has run (a busy
        one cuts its step short instead)."""
        if replica.busy:
            self._interrupt(replica, self.loop.now)
            return
        if not self._kick_pending[replica.index]:
            self._kick_pending[replica.index] = True
            self.loop.at(self.loop.now, self._plan, replica)

    def _interrupt(self, replica: Replica, now: float) -> None:
        """Cut a busy replica's step at ``now``; its new end supersedes the planned one."""
        end = replica.interrupt(now)
        if end is not None:
            self.loop.at(end, self._step_end, (replica, replica.version))

    def _plan(self, replica: Replica) -> None:
        self._kick_pending[replica.index] = False
        if replica.busy:
            return
        now = self.loop.now
        end = replica.plan(now)
        if end is not None:
            self.loop.at(end, self._step_end, (replica, replica.version))
            self._planned(replica, now, end)

    def _step_end(self, item: tuple[Replica, int]) -> None:
        replica, version = item
        if version != replica.version or not replica.busy:
            return  # superseded by an interrupt
        finished = replica.complete(self.loop.now)
        self._stepped(replica)
        for request in finished:
            self._call_done(replica, request)
        self._schedule_replica_timers(replica)
        self._plan(replica)

    # ---- timers: pin expiry and host-tier prefetch --------------------------------------------
    def _schedule_replica_timers(self, replica: Replica) -> None:
        """Turn the replica's new pins and prefetches into events."""
        if not replica.new_pins and not replica.new_prefetches:
            return  # (most steps)
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
        replica.sync(self.loop.now)  # (a folded run's boundaries before this instant)
        if replica.pins.get(workflow) is pin:  # not consumed or replaced meanwhile
            replica.unpin(workflow, self.loop.now)
            if replica.waiting:
                self._kick(replica)
