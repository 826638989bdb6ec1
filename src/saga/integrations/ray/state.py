"""What SAGA's router replicas in Ray Serve agree on: one named actor, :class:`SagaState`.

Each Serve handle (so each ingress replica, each "router replica") runs its own
:class:`~.router.SagaRequestRouter`; what they must agree on lives here, the Ray
counterpart of the gateway's Redis store (:mod:`saga.gateway.store`):

* **sessions**: a workflow's home (the Ray replica id its last call went to) and that it
  was admitted -- read by a router that did not place the workflow's last call, written
  (fire and forget) when a call is sent;
* **tenant service**: the seconds of work each tenant was served, summed over routers,
  so that Agent Fair Share is global;
* **learned graphs**: the observations each router's Agent Execution Graphs made, as a
  bounded log (the gateway store's :class:`~saga.gateway.store.MemoryStore` log);
* **the gate's working set**: each router's admitted working set, summed, so that one
  router's memory gate counts the workflows the others admitted;
* **route overhead samples**: each router's decision times, for benchmarks.

Bounded as the store is: at most ``max_sessions`` homes and admissions (the oldest go
first), each with a TTL (``session_ttl``); a router's report expires after
``router_ttl``; the observation log keeps its last ``graph_log_length`` entries.

**What a restart loses (only warmth).** The actor is created with ``max_restarts=-1``:
Ray restarts it empty (a new ``incarnation``). Homes and admissions are lost -- a
workflow's next call on a router that did not place its last one is placed afresh (it
may land on another replica and recompute its prefix) and is not gated again by a
router that admitted it; other routers' working sets are unknown until their next sync
(one ``sync_interval``); the tenant totals restart at zero (each router keeps what it
already applied); observations not yet fetched are gone (each router keeps its own
graphs). Routing goes on during the restart: a router that cannot reach the actor
decides alone with what it knows.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from saga.gateway.store import FIRST_CURSOR, MemoryStore
from saga.sched.saga.graph import Observation

V = TypeVar("V")


class BoundedTTL(Generic[V]):
    """A map with at most ``capacity`` entries, each valid for ``ttl`` seconds."""

    def __init__(self, capacity: int, ttl: float, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[V, float]] = OrderedDict()

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._items[key]
            return None
        return item[0]

    def put(self, key: str, value: V) -> None:
        self._items.pop(key, None)  # re-insert: the order is age
        self._items[key] = (value, self._clock() + self.ttl)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def expire(self) -> None:
        now = self._clock()
        while self._items:
            key, (_, expires) = next(iter(self._items.items()))
            if expires > now:
                break
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class SyncReply:
    """What a router learns at a sync."""

    incarnation: str
    others_working_set: float
    tenant_service: dict[str, float]
    cursor: str
    observations: list[Observation] = field(default_factory=list)
    #: (workflow, "placed" | "ended") by other routers since the router's event cursor
    events: list[tuple[str, str]] = field(default_factory=list)
    event_cursor: int = 0


class SagaState:
    """The shared state (a Ray actor: every method is one round trip)."""

    def __init__(
        self, *, max_sessions: int = 100_000, session_ttl: float = 600.0,
        router_ttl: float = 10.0, graph_log_length: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.incarnation = uuid.uuid4().hex
        self._clock = clock
        self.homes: BoundedTTL[str] = BoundedTTL(max_sessions, session_ttl, clock)
        self.admitted: BoundedTTL[bool] = BoundedTTL(max_sessions, session_ttl, clock)
        self.working_sets: BoundedTTL[float] = BoundedTTL(1024, router_ttl, clock)
        self.service: dict[str, float] = {}
        self._log = MemoryStore(clock, max_sessions, graph_log_length)
        self.overhead: dict[str, deque[float]] = {}
        self.held: BoundedTTL[list[str]] = BoundedTTL(1024, router_ttl, clock)
        #: The working set each router's gate counted at its last sync (for tests).
        self.gate_views: dict[str, float] = {}
        #: (seq, router, workflow, kind): which router has a workflow's state now
        self.events: deque[tuple[int, str, str, str]] = deque(maxlen=max_sessions)
        self._event_seq = 0

    async def session(self, workflow: str) -> tuple[str | None, bool]:
        """The workflow's home replica id (if any) and whether it was admitted."""
        return self.homes.get(workflow), bool(self.admitted.get(workflow))

    async def placed(self, workflow: str, replica_id: str, router: str = "") -> None:
        """A router sent a call of ``workflow`` to ``replica_id`` (so it was admitted)."""
        self.homes.put(workflow, replica_id)
        self.admitted.put(workflow, True)
        self._event(router, workflow, "placed")

    async def ended(self, workflow: str, router: str = "") -> None:
        """The workflow's last call ended (seen by ``router``)."""
        self._event(router, workflow, "ended")

    def _event(self, router: str, workflow: str, kind: str) -> None:
        self._event_seq += 1
        self.events.append((self._event_seq, router, workflow, kind))

    async def sync(
        self, router: str, working_set: float, charges: dict[str, float],
        observations: Sequence[Observation], cursor: str, overhead_ms: Sequence[float] = (),
        held: Sequence[str] = (), event_cursor: int = 0,
    ) -> SyncReply:
        """A router's periodic exchange: what it holds and did; what the others did."""
        self.working_sets.put(router, working_set)
        self.held.put(router, list(held))
        self.working_sets.expire()
        for tenant, seconds in charges.items():
            self.service[tenant] = self.service.get(tenant, 0.0) + seconds
        if observations:
            await self._log.publish_observations(router, observations)
        if cursor != FIRST_CURSOR and not self._log_has(cursor):
            cursor = FIRST_CURSOR  # a cursor of another incarnation: read from the start
        cursor, fetched = await self._log.fetch_observations(router, cursor, 64)
        if overhead_ms:
            self.overhead.setdefault(router, deque(maxlen=20_000)).extend(overhead_ms)
        others = sum(v for k, (v, _) in self.working_sets._items.items() if k != router)
        self.gate_views[router] = working_set + others
        self.homes.expire()
        self.admitted.expire()
        if event_cursor > self._event_seq:  # a cursor of another incarnation
            event_cursor = 0
        events = [(w, k) for seq, origin, w, k in self.events
                  if seq > event_cursor and origin != router]
        return SyncReply(self.incarnation, others, dict(self.service), cursor, fetched,
                         events, self._event_seq)

    async def record_overhead(self, router: str, overhead_ms: Sequence[float]) -> None:
        """Decision times of a router that does not sync (Ray's own, timed)."""
        self.overhead.setdefault(router, deque(maxlen=20_000)).extend(overhead_ms)

    async def reset_overhead(self) -> None:
        self.overhead.clear()

    def _log_has(self, cursor: str) -> bool:
        return int(cursor) <= self._log._log_seq

    async def summary(self) -> dict[str, object]:
        """Sizes and route overhead samples (for tests and benchmarks)."""
        return {
            "incarnation": self.incarnation, "homes": len(self.homes),
            "admitted": len(self.admitted), "routers": len(self.working_sets),
            "working_set": sum(v for v, _ in self.working_sets._items.values()),
            "gate_views": {k: v for k, v in self.gate_views.items()
                           if self.working_sets.get(k) is not None},
            "held": sorted({w for v, _ in self.held._items.values() for w in v}),
            "tenant_service": dict(self.service),
            "overhead_ms": {k: list(v) for k, v in self.overhead.items()},
        }

    async def ping(self) -> str:
        return self.incarnation
