"""A capacity probe's verdict, known before its simulation ends.

A probe fails when fewer than the target share of its judged workflows meet the service
level (TCT at most ``slowdown`` x their TCT alone). A judged workflow that has not finished
within that bound of its arrival has missed, whatever happens later, and a rejected one
missed when it was rejected: once that many have missed that the share can no longer reach
the target, the verdict is certain and the rest of the simulation cannot change it. Likewise once so
many have met the level that the share reaches the target whatever the others do.
:class:`VerdictWatch` halts the run at that instant.

It reads only what the judge already holds: the simulator's clock, the workflows'
arrival times and their TCTs alone. The policy sees nothing new, and nothing it decides
before the halt changes: the watch's events are background events that only read records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from saga.engine.events import EventLoop
from saga.metrics.stationarity import met_level
from saga.sim.simulator import WorkflowRecord


def decisive_misses(judged: int, target: float) -> int | None:
    """The fewest misses among ``judged`` workflows that leave their share meeting the
    level below ``target`` (the share computed as the search computes it: met / judged);
    None when no number of misses does (no workflow judged, or a target of 0)."""
    if judged == 0:
        return None  # nothing judged: the search counts the rate served
    for missed in range(judged + 1):
        if (judged - missed) / judged < target:
            return missed
    return None


def first_miss_instant(arrival: float, bound: float) -> float:
    """The earliest simulated instant ``t`` at which ``t - arrival > bound`` in floating
    point: a workflow unfinished then can no longer meet ``met_level``, which tests
    ``finished_at - arrival <= bound``; one finishing any earlier still meets it."""
    instant = arrival + bound
    while instant - arrival <= bound:
        instant = math.nextafter(instant, math.inf)
    while (earlier := math.nextafter(instant, -math.inf)) - arrival > bound:
        instant = earlier
    return instant


class VerdictWatch:
    """Counts, as a run goes on, the judged workflows that have certainly missed the
    service level and those that have met it, and halts the run at the ``misses``-th miss
    (the probe has failed) or the ``meets``-th workflow meeting it (it is served); None:
    no such limit. A :class:`saga.sim.simulator.RunWatch`.

    ``alone`` maps each judged workflow to its TCT alone; the others are not watched."""

    def __init__(self, alone: Mapping[str, float], slowdown: float, *,
                 misses: int | None, meets: int | None) -> None:
        for name, limit in (("misses", misses), ("meets", meets)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1, got {limit}")
        self.alone = alone
        self.slowdown = slowdown
        self.misses = misses
        self.meets = meets
        self.missed = 0
        self.met = 0
        self.verdict = ""  # "failed" or "served" once the run was halted
        self.halted_at: float | None = None  # the simulated instant the verdict became certain
        self._counted: set[str] = set()

    def arrived(self, record: WorkflowRecord, loop: EventLoop) -> None:
        alone = self.alone.get(record.workflow)
        if alone is None or self.misses is None:
            return
        # a background event: it never keeps the run alive, and it runs after every event
        # of an earlier instant, so a workflow finishing just in time is seen finished
        deadline = first_miss_instant(record.arrival, self.slowdown * alone)
        loop.at_background(deadline, self._deadline, (record, loop))

    def rejected(self, record: WorkflowRecord, loop: EventLoop) -> None:
        if record.workflow in self.alone:
            self._miss(record, loop)

    def finished(self, record: WorkflowRecord, loop: EventLoop) -> None:
        alone = self.alone.get(record.workflow)
        if alone is None or not met_level(record, alone, self.slowdown):
            return  # a late finish was counted at its deadline
        self.met += 1
        if self.meets is not None and self.met >= self.meets:
            self._halt("served", loop)

    def _deadline(self, item: tuple[WorkflowRecord, EventLoop]) -> None:
        record, loop = item
        if record.workflow in self._counted:
            return  # rejected earlier: counted then
        if not met_level(record, self.alone[record.workflow], self.slowdown):
            self._miss(record, loop)

    def _miss(self, record: WorkflowRecord, loop: EventLoop) -> None:
        self._counted.add(record.workflow)
        self.missed += 1
        if self.misses is not None and self.missed >= self.misses:
            self._halt("failed", loop)

    def _halt(self, verdict: str, loop: EventLoop) -> None:
        if not self.verdict:
            self.verdict, self.halted_at = verdict, loop.now
            loop.halt()
