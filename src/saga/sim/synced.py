"""A replica as the simulator's policy sees it: brought up to the clock before each read.

A replica may fold a memory-bound decode run's block boundaries into one event
(``Replica.fold_boundaries``, :mod:`saga.engine.fold`), or a run of mixed steps
(:mod:`saga.engine.mixed_fold`); its state is then behind the
clock until someone brings it up to date (``Replica.sync``). The policy reads replicas
through these views, which do that first, so that it reads exactly what stepping one run
at a time would show it at that instant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from saga.engine.events import EventLoop
from saga.engine.kvcache import RadixKV, Run
from saga.engine.replica import Pin, Replica, Request


class SyncedReplica:
    """``replica`` as of ``loop.now`` (:class:`saga.sched.view.ReplicaView`)."""

    __slots__ = ("_loop", "_replica")

    def __init__(self, replica: Replica, loop: EventLoop) -> None:
        self._replica = replica
        self._loop = loop

    def _synced(self) -> Replica:
        replica = self._replica
        replica.sync(self._loop.now)
        return replica

    # ---- fixed, or changed only by the runtime: no sync needed --------------------------
    @property
    def index(self) -> int:
        return self._replica.index

    @property
    def up(self) -> bool:
        return self._replica.up

    @property
    def slots(self) -> None:
        return None  # the simulated engine keeps any number of sequences' KV

    @property
    def block_tokens(self) -> int:
        return self._replica.block_tokens

    @property
    def block_bytes(self) -> int:
        return self._replica.block_bytes

    @property
    def max_num_batched_tokens(self) -> int:
        return self._replica.max_num_batched_tokens

    # ---- what a step changes -------------------------------------------------------------
    @property
    def waiting(self) -> Sequence[Request]:
        return self._synced().waiting

    @property
    def running(self) -> Sequence[Request]:
        return self._synced().running

    @property
    def context_tokens(self) -> int:
        return self._synced().context_tokens

    @property
    def demand_tokens(self) -> int:
        return self._synced().demand_tokens

    @property
    def backlog_tokens(self) -> int:
        return self._synced().backlog_tokens

    @property
    def kv(self) -> RadixKV:
        return self._synced().kv

    @property
    def host(self) -> RadixKV | None:
        return self._synced().host

    @property
    def pins(self) -> Mapping[str, Pin]:
        return self._synced().pins

    def load(self) -> int:
        return self._synced().load()

    def outstanding_tokens(self) -> int:
        return self._synced().outstanding_tokens()

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        return self._synced().cached_blocks_for(runs)

    def unpin(self, workflow: str, now: float) -> bool:
        return self._synced().unpin(workflow, now)
