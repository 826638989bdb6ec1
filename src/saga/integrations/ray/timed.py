"""Ray Serve's own request routers, timed: what the benchmark compares SAGA's router with.

Each class is Ray's router unchanged but for :meth:`choose_replicas`, whose wall time
is recorded and sent now and then to the shared state actor (when there is one), so that
``saga bench ray`` reports every router's decision overhead measured the same way as
:class:`~.router.SagaRequestRouter`'s.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import ray
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter
from ray.serve.request_router import PendingRequest, RunningReplica

from saga.integrations.ray.router import STATE_ACTOR, STATE_NAMESPACE

_FLUSH_SECONDS = 0.5


class _Timed:
    """Times ``choose_replicas`` of the router class it is mixed before."""

    _samples: list[float]
    _flushed: float
    _router_id: str

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not hasattr(self, "_samples"):
            self._samples, self._flushed = [], time.monotonic()
            self._router_id = uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        ranks: list[list[RunningReplica]] = await super().choose_replicas(  # type: ignore[misc]
            candidate_replicas, pending_request)
        self._samples.append((time.perf_counter() - t0) * 1000.0)
        if time.monotonic() - self._flushed > _FLUSH_SECONDS:
            self._flush()
        return ranks

    def _flush(self) -> None:
        self._flushed = time.monotonic()
        samples, self._samples = self._samples, []
        try:
            actor: Any = ray.get_actor(STATE_ACTOR, namespace=STATE_NAMESPACE)
            actor.record_overhead.remote(self._router_id, samples)
        except Exception:  # no state actor: the samples are dropped
            return


class TimedPow2Router(_Timed, PowerOfTwoChoicesRequestRouter):
    """Ray's default: power of two choices."""


class TimedConsistentHashRouter(_Timed, ConsistentHashRouter):
    """Ray's session affinity by consistent hashing of the session id."""


class TimedPrefixAffinityRouter(_Timed, PrefixCacheAffinityRouter):  # type: ignore[misc]
    """Ray Serve LLM's prefix-cache-aware router (a prefix tree in an actor)."""
