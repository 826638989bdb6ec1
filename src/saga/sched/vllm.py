"""vLLM baselines: vLLM v1 engine semantics behind three production routers.

Inside each replica all three are vLLM v1 (``vllm/v1/core/sched/scheduler.py``):
first come first served, chunked prefill under ``max_num_batched_tokens``,
automatic prefix caching with an LRU free-block queue (``block_pool.py``), and
preemption by recompute of the last running request. They differ in routing
(see docs/baselines.md for the sources):

* ``vllm-rr``: round robin over replicas (production-stack ``RoundRobinRouter``);
* ``vllm-affinity``: session affinity by consistent hashing of the session id
  (production-stack ``SessionRouter``, which uses a hash ring with 160 virtual
  nodes per replica); the paper's baseline;
* ``vllm-least-loaded``: fewest calls queued or running. production-stack has no
  such router; this is the usual "least outstanding requests" rule.

``vllm-affinity+priority`` and ``vllm-least-loaded+priority`` add the service
level vLLM offers: ``--scheduling-policy priority`` with a per-request
``priority`` (``vllm/v1/core/sched/request_queue.py``, ``PriorityRequestQueue``:
lower value first, then arrival time; the scheduler preempts the running
request with the largest ``(priority, arrival_time)``). Interactive tenants (a
workflow with an SLO) send priority 0, best effort 1.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import TYPE_CHECKING

from saga.sched.policy import CallInfo, Policy, PolicyContext, Router

if TYPE_CHECKING:
    from saga.sched.view import CallView, ReplicaView

#: vLLM request priorities (lower is served first): interactive, then best effort.
INTERACTIVE_PRIORITY = 0
BEST_EFFORT_PRIORITY = 1


class RoundRobinRouter(Router):
    """Next replica in a fixed cycle, skipping replicas that are down."""

    name = "round-robin"

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self._next = 0

    def place(self, call: CallInfo, now: float) -> int:
        n = len(self.ctx.replicas)
        for _ in range(n):
            index = self._next % n
            self._next += 1
            if self.ctx.replicas[index].up:
                return index
        raise RuntimeError("no replica is up")


class LeastLoadedRouter(Router):
    """Replica with the fewest calls queued or running; ties to the lowest index."""

    name = "least-loaded"

    def place(self, call: CallInfo, now: float) -> int:
        best = min(
            (r for r in self.ctx.replicas if r.up),
            key=lambda r: (r.load(), r.index),
            default=None,
        )
        if best is None:
            raise RuntimeError("no replica is up")
        return best.index


class ConsistentHashRouter(Router):
    """Session affinity: a hash ring of replicas, keyed by the workflow id.

    Like production-stack's session router, each replica has 160 virtual nodes
    on an MD5 ring, so that losing a replica moves only its own sessions.
    """

    name = "session-hash"
    VIRTUAL_NODES = 160

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        ring: list[tuple[int, int]] = []
        for replica in ctx.replicas:
            for v in range(self.VIRTUAL_NODES):
                ring.append((_md5_int(f"replica-{replica.index}-{v}"), replica.index))
        ring.sort()
        self._ring = ring
        self._keys = [k for k, _ in ring]
        self._cache: dict[str, int] = {}

    def place(self, call: CallInfo, now: float) -> int:
        home = self._cache.get(call.workflow)
        if home is None:
            home = self._lookup(_md5_int(call.workflow))
            self._cache[call.workflow] = home
        if self.ctx.replicas[home].up:
            return home
        return self._lookup_up(_md5_int(call.workflow))

    def _lookup(self, key: int) -> int:
        i = bisect.bisect(self._keys, key) % len(self._ring)
        return self._ring[i][1]

    def _lookup_up(self, key: int) -> int:
        i = bisect.bisect(self._keys, key)
        for step in range(len(self._ring)):
            index = self._ring[(i + step) % len(self._ring)][1]
            if self.ctx.replicas[index].up:
                return index
        raise RuntimeError("no replica is up")


def _md5_int(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode(), usedforsecurity=False).digest()[:8], "big")


class VLLMRoundRobin(Policy):
    name = "vllm-rr"

    def __init__(self) -> None:
        super().__init__(RoundRobinRouter())


class VLLMAffinity(Policy):
    name = "vllm-affinity"

    def __init__(self) -> None:
        super().__init__(ConsistentHashRouter())


class VLLMLeastLoaded(Policy):
    name = "vllm-least-loaded"

    def __init__(self) -> None:
        super().__init__(LeastLoadedRouter())


def request_priority(request: CallView) -> int:
    """The ``priority`` a client sends: interactive work (an SLO) ahead of best effort."""
    interactive = request.info is not None and request.info.slo is not None
    return INTERACTIVE_PRIORITY if interactive else BEST_EFFORT_PRIORITY


class _PriorityScheduling(Policy):
    """vLLM's ``priority`` scheduling policy: ``(priority, arrival)`` orders the waiting
    queue and the running list (so preemption takes the largest key)."""

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return (request_priority(request), request.enqueued_at, request.seq)


class VLLMAffinityPriority(_PriorityScheduling):
    name = "vllm-affinity+priority"

    def __init__(self) -> None:
        super().__init__(ConsistentHashRouter())


class VLLMLeastLoadedPriority(_PriorityScheduling):
    name = "vllm-least-loaded+priority"

    def __init__(self) -> None:
        super().__init__(LeastLoadedRouter())
