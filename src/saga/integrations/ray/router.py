"""``SagaRequestRouter``: SAGA's policy as Ray Serve's request router.

Configure a deployment with::

    RequestRouterConfig(
        request_router_class="saga.integrations.ray.router.SagaRequestRouter",
        request_router_kwargs={"policy": "saga", "slots": 4, "cluster": "small",
                               "retains": True},  # True: the replicas take saga_ttl (vLLM)
        request_routing_stats_period_s=0.5, max_backoff_s=0.1,
    )

Ray Serve builds one router per deployment handle (so one per ingress replica: the
"router replicas"). Each asks :class:`~.routing.SagaRouting` for the tiers of every
request (:meth:`choose_replicas`), tells it where the request went
(:meth:`on_request_routed`) and when it ended (:meth:`on_request_completed`), and feeds
it the replicas' ``record_routing_stats()`` (:meth:`update_replicas`). A held request
gets no replica: Ray backs off and asks again. Every pending request has a routing task
of its own here (Ray's default caps them at twice the replicas), so that held requests
never keep the calls of admitted workflows waiting.

Shared state goes through the named :class:`~.state.SagaState` actor: one round trip
when a router sees a workflow whose last call it did not place (its home, whether it was
admitted), a fire-and-forget write when a call is sent, and a periodic sync (working
set, tenant service, learned graphs, overhead samples). The actor unreachable, a router
decides alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import Any

import ray
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from saga.gateway.store import FIRST_CURSOR
from saga.integrations.ray.call import RayCall
from saga.integrations.ray.routing import Held, SagaRouting, SharedSession
from saga.integrations.ray.state import SagaState, SyncReply
from saga.integrations.ray.view import ReplicaStats
from saga.sched.saga.graph import Observation
from saga.sched.saga.policy import SagaPolicy

#: The shared state actor's default name (and namespace).
STATE_ACTOR = "saga-ray-state"
STATE_NAMESPACE = "saga"
log = logging.getLogger("saga.ray")


def state_actor(name: str = STATE_ACTOR, namespace: str = STATE_NAMESPACE) -> Any:
    """The named shared-state actor, created on first use (detached, restarted by Ray
    when it dies: a restart loses only warmth, see :mod:`.state`)."""
    actor_class = ray.remote(SagaState)
    return actor_class.options(
        name=name, namespace=namespace, get_if_exists=True, lifetime="detached",
        max_restarts=-1, max_task_retries=0, num_cpus=0,
    ).remote()


def find_call(pending: PendingRequest | None) -> RayCall | None:
    if pending is None:
        return None
    for arg in pending.args:
        if isinstance(arg, RayCall):
            return arg
    return None


class SagaRequestRouter(RequestRouter):
    """Ray Serve's request router, deciding with SAGA's policy."""

    max_num_routing_tasks_cap = 4096

    @property
    def max_num_routing_tasks(self) -> int:
        return self.max_num_routing_tasks_cap

    def initialize_state(self, **kwargs: Any) -> None:
        self.routing = SagaRouting(
            kwargs.get("policy", "saga"), slots=int(kwargs.get("slots", 4)),
            cluster=kwargs.get("cluster", "small"),
            block_tokens=int(kwargs.get("block_tokens", 64)),
            hold_retry=float(kwargs.get("hold_retry", 0.02)),
            retains=bool(kwargs.get("retains", False)),
            learn_token_scale=bool(kwargs.get("learn_token_scale", True)),
        )
        self.state_name = kwargs.get("state_actor", STATE_ACTOR)
        self.state_namespace = kwargs.get("state_namespace", STATE_NAMESPACE)
        self.sync_interval = float(kwargs.get("sync_interval", 0.5))
        self.state_timeout = float(kwargs.get("state_timeout", 0.5))
        self.router_id = uuid.uuid4().hex[:12]
        self._origin = time.monotonic()
        self._ids: dict[str, ReplicaID] = {}
        self._stats_read: dict[str, Any] = {}  # replica id -> the stats dict last read
        self._state: Any = None
        self._sync_task: asyncio.Task[None] | None = None
        self._charges: dict[str, float] = {}
        self._outbox: deque[Observation] = deque(maxlen=10_000)
        self._overhead: list[float] = []
        self._cursor = FIRST_CURSOR
        self._event_cursor = 0
        self._incarnation: str | None = None
        self._service_seen: dict[str, float] = {}
        self.routing.on_charge = self._charged
        policy = self.routing.policy
        if isinstance(policy, SagaPolicy) and policy.graphs.learning:
            policy.graphs.set_sink(self._outbox.append)

    def now(self) -> float:
        return time.monotonic() - self._origin

    # ---- replicas --------------------------------------------------------------------
    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._ids = {r.replica_id.unique_id: r.replica_id for r in replicas}
        self.routing.update_replicas(list(self._ids))
        self._read_stats(replicas)

    def _read_stats(self, replicas: list[RunningReplica]) -> None:
        for r in replicas:
            raw = r.routing_stats
            rid = r.replica_id.unique_id
            if self._stats_read.get(rid) is raw:  # Ray replaces the dict at each update
                continue
            self._stats_read[rid] = raw
            self.routing.report(rid, ReplicaStats.read(raw))

    # ---- the decision ----------------------------------------------------------------
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        call = find_call(pending_request)
        if call is None or pending_request is None:  # not a SAGA call: any replica
            return [candidate_replicas]
        if self._incarnation is None and self._actor() is not None:
            # a router's first decision waits for one exchange (bounded): its gate must
            # count what the other routers admitted
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sync(), self.state_timeout)
        t0 = time.perf_counter()
        self._ensure_sync()
        self._read_stats(candidate_replicas)
        shared = None
        if not self.routing.knows_home(call.workflow):
            shared = await self._session(call.workflow)
        request_id = pending_request.metadata.internal_request_id
        decision = self.routing.route(request_id, call, self.now(), shared)
        self._overhead.append((time.perf_counter() - t0) * 1000.0)
        if isinstance(decision, Held):
            pending_request.routing_context.should_backoff = True
            return []
        ranks = []
        for tier in decision.ranks:
            replicas = [self._replicas[self._ids[r]] for r in tier
                        if r in self._ids and self._ids[r] in self._replicas]
            if replicas:
                ranks.append(replicas)
        return ranks

    async def _session(self, workflow: str) -> SharedSession | None:
        actor = self._actor()
        if actor is None:
            return None
        try:
            home, admitted = await asyncio.wait_for(
                actor.session.remote(workflow), self.state_timeout)
        except Exception:  # the actor restarting or gone: decide alone
            return None
        return SharedSession(home, admitted)

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any,
    ) -> None:
        call = find_call(pending_request)
        if call is None:
            return
        self.routing.sent(pending_request.metadata.internal_request_id,
                          replica_id.unique_id, self.now())
        actor = self._actor()
        if actor is not None:
            try:
                actor.placed.remote(call.workflow, replica_id.unique_id, self.router_id)
            except Exception:
                self._state = None

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.routing.replica_died(replica_id.unique_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        ended = self.routing.completed(internal_request_id, self.now())
        actor = self._actor() if ended else None
        if actor is not None:
            try:
                actor.ended.remote(ended, self.router_id)
            except Exception:
                self._state = None

    # ---- shared state ----------------------------------------------------------------
    def _actor(self) -> Any:
        if self._state is None:
            try:
                self._state = ray.get_actor(self.state_name, namespace=self.state_namespace)
            except Exception:
                return None
        return self._state

    def _charged(self, tenant: str, seconds: float) -> None:
        self._charges[tenant] = self._charges.get(tenant, 0.0) + seconds

    def _ensure_sync(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as error:
                log.debug("saga ray sync failed: %s", error)
                self._state = None
            self.routing.sweep(self.now())
            await asyncio.sleep(self.sync_interval)

    async def sync(self) -> None:
        """One exchange with the shared state actor."""
        actor = self._actor()
        if actor is None:
            return
        working = self.routing.local_working_set()
        charges, self._charges = self._charges, {}
        observations = list(self._outbox)
        self._outbox.clear()
        overhead, self._overhead = self._overhead, []
        try:
            reply: SyncReply = await asyncio.wait_for(actor.sync.remote(
                self.router_id, working, charges, observations, self._cursor, overhead,
                sorted(self.routing.held), self._event_cursor,
            ), 5.0)
        except Exception:
            for tenant, seconds in charges.items():  # kept for the next exchange
                self._charged(tenant, seconds)
            raise
        self._apply(reply, charges)

    def _apply(self, reply: SyncReply, charges: dict[str, float]) -> None:
        policy = self.routing.policy
        if reply.incarnation != self._incarnation:  # a new actor: its totals start anew
            self._incarnation = reply.incarnation
            self._service_seen = dict(reply.tenant_service)
        else:
            for tenant, total in reply.tenant_service.items():
                others = total - self._service_seen.get(tenant, 0.0) - charges.get(tenant, 0.0)
                if others > 0:
                    self.routing.charge(tenant, others)
            self._service_seen = dict(reply.tenant_service)
        self._cursor = reply.cursor
        self._event_cursor = reply.event_cursor
        for workflow, _ in reply.events:  # placed or ended elsewhere: not ours any more
            self.routing.hand_over(workflow, self.now())
        self.routing.remote_working_set = reply.others_working_set
        if isinstance(policy, SagaPolicy) and reply.observations:
            policy.graphs.apply(reply.observations)
