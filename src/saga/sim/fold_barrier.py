"""Folded replicas brought up to the clock before the policy acts.

A replica folds a memory-bound decode run's block boundaries into one event
(:mod:`saga.engine.fold`), or a run of mixed steps (:mod:`saga.engine.mixed_fold`), and
applies each later, when it is read (``Replica.sync``).
Under a static eviction and queue order that is exact with syncs before reads alone
(:mod:`saga.sim.synced`). A keyed eviction order (saga, Bélády, KVFlow) or a dynamic
queue order (saga's AFS) asks the policy at each boundary, and the policy's state changes
at its hooks, for any workflow: applied after a hook of a later instant, a boundary would
read a state it never saw. So the simulator calls :meth:`PendingFolds.sync_due` before
every hook that may change that state (its own calls, and the engine's through
:class:`BarrierHooks`): every boundary of an earlier instant is applied first, and a
boundary applied later still reads the state of its own instant. The cost is a heap push
and pop per folded run, not a scan of the fleet.

Three assumptions, all of the policy: its queue keys change no state of its own (the
engine asks them of every queued call at every step, so they are read-only lookups), nor
does ``preempt_for`` (the base policy's answers False, saga's compares two fair-share
accounts), so neither needs the barrier (the contract test
``tests/contract/test_policy_hooks.py`` snapshots every registered policy's whole state
around both and fails on any change); and the eviction key reads no replica. A queue
key may read the replica it is asked about (saga's ``fit_first_wait`` reads its cache),
which the sync brings to that instant.
"""

from __future__ import annotations

import heapq

from saga.engine.replica import EngineHooks, Replica, Request
from saga.sched.decisions import Retention


class PendingFolds:
    """The replicas whose folded runs have boundaries still to apply, by the next one."""

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self, replicas: int) -> None:
        # (instant at or before the replica's next boundary, entry id, replica); an
        # entry is live while its id is the replica's in _live (a newer fold replaces it)
        self._heap: list[tuple[float, int, Replica]] = []
        self._live = [-1] * replicas
        self._seq = 0

    def add(self, replica: Replica) -> None:
        """``replica`` just planned a folded run: its first boundary is its step's end."""
        self._seq += 1
        self._live[replica.index] = self._seq
        heapq.heappush(self._heap, (replica.step_end, self._seq, replica))

    def sync_due(self, now: float) -> None:
        """Apply every folded boundary at or before ``now``, each at its own instant."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, replica = heapq.heappop(heap)
            if self._live[replica.index] != seq:
                continue  # the replica planned a newer fold (or this one was cut)
            # unordered: the queues are sorted where the engine reads them (Replica.sync)
            replica.sync(now, ordered=False)
            if replica.folded:  # boundaries after now are left: its next one
                self._seq += 1
                self._live[replica.index] = self._seq
                heapq.heappush(heap, (replica.step_end, self._seq, replica))
            else:
                self._live[replica.index] = -1


class BarrierHooks:
    """``hooks`` as the engine asks them, each hook that may change the policy's state
    preceded by :meth:`PendingFolds.sync_due` at the hook's instant."""

    __slots__ = (
        "_hooks", "_pending", "preempt_for", "prefill_limit", "queue_key", "queue_keys",
        "static_order",
    )

    def __init__(self, hooks: EngineHooks, pending: PendingFolds) -> None:
        self._hooks = hooks
        self._pending = pending
        self.static_order = hooks.static_order
        # read-only (the module's assumption): no barrier, and asked inside a sync
        self.queue_key = hooks.queue_key
        self.queue_keys = hooks.queue_keys
        # reads only the stepping replica (up to its own instant) and changes no state
        self.prefill_limit = hooks.prefill_limit
        # read-only too (the module's assumption): under saga a full replica with calls
        # waiting asks it at every plan, and the barrier then synced every folded replica
        # (a fifth of saga's coding probe, tenth pass in docs/engine.md)
        self.preempt_for = hooks.preempt_for

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        self._pending.sync_due(now)
        return self._hooks.retention(replica, request, now)

    def unpin_order(self, replica: Replica, now: float) -> list[str]:
        self._pending.sync_due(now)
        return self._hooks.unpin_order(replica, now)
