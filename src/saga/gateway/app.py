"""The gateway: an OpenAI-compatible HTTP front that asks the scheduler core.

For every call: find the tenant (API key) and the workflow (headers, or the
fallback below), admit the workflow (the policy may defer it: the call waits here,
or gets a 429 after ``max_defer``), place the call (the policy, or the workflow's
home replica from the store), wait for a slot at that replica (weighted fair
queueing across tenants when the replica is at its concurrency limit), forward the
call, stream the answer back, then tell the policy and carry out its retention
decision through the backend.

Workflow identity (workflow, agent, the tool before the call, the end) is
:func:`saga.gateway.identity.identify`: our ``x-saga-*`` headers first, then what
standard clients send (OpenAI body fields, coding agents' session headers, the
conversation's start). Ids are per tenant; a workflow with no ``x-saga-end`` ends after
``workflow_idle_timeout``.

Reliability (docs/RELIABILITY.md): every queue is bounded (``max_pending``,
``max_queue``, ``max_workflows``: beyond, a 429 with Retry-After); a backend that fails
before any byte reached the client (unreachable, timed out, 5xx, disconnected) is
retried on the replica the policy picks then, at most ``retries`` times and within a
retry budget; a client that leaves cancels its backend call (the connection is
closed); API keys are compared in constant time and never logged.

HTTP: :func:`serve` runs :class:`Gateway` on :mod:`saga.gateway.server` (asyncio
protocols and httptools) and forwards calls on :mod:`saga.gateway.upstream` pools; the
handlers only see :class:`~saga.gateway.server.HttpRequest`, so :meth:`Gateway.app`
also offers them as an aiohttp application, for embedding.

:class:`Gateway` is the composition: it builds the policy bound to one view per backend
(:mod:`.view`: each backend's fair queue and what the policy reads of it) and holds the
parts every job shares (config, clock, policy, views, backends, store, metrics). The jobs
are modules of their own: start, stop and background tasks (:mod:`.lifecycle`), the HTTP
handlers (:mod:`.handlers`), the call pipeline (:mod:`.pipeline`), store operations that
fail soft (:mod:`.soft_store`), API keys (:mod:`.auth`), relaying answers (:mod:`.relay`),
learned-graph sync (:mod:`.graph_sync`) and the ``/metrics`` page (:mod:`.prometheus`).
"""

from __future__ import annotations

import asyncio
import importlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from saga.engine.cluster import get_cluster
from saga.errors import UserError
from saga.gateway.agent_names import AgentNames
from saga.gateway.auth import KeyRing
from saga.gateway.backends import BACKENDS, Backend
from saga.gateway.config import GatewayConfig
from saga.gateway.engine_speed import EngineSpeed
from saga.gateway.graph_sync import GraphSync
from saga.gateway.handlers import HttpHandlers
from saga.gateway.lifecycle import Lifecycle
from saga.gateway.metrics import Metrics
from saga.gateway.pipeline import CallPipeline, RetryBudget
from saga.gateway.server import HttpRequest, HttpServer, Response, ResponseStream, RouteTable
from saga.gateway.soft_store import SoftStore
from saga.gateway.store import Store, build_store
from saga.gateway.view import RemoteReplicaView
from saga.gateway.workflow_state import WorkflowState
from saga.sched.policy import Policy, PolicyContext
from saga.sched.registry import build_policy
from saga.sched.saga.graph import GraphStore
from saga.wire.token_scale import TokenScale

if TYPE_CHECKING:
    from aiohttp import web

_T = TypeVar("_T")

__all__ = ["Gateway", "RetryBudget", "WorkflowState", "serve"]


class Gateway:
    """One gateway process: the policy, the backends, the store, the HTTP app."""

    def __init__(
        self, config: GatewayConfig, *, clock: Callable[[], float] = time.monotonic,
        store: Store | None = None,
    ) -> None:
        """``store``: shared state to use instead of the one ``config.store`` describes
        (gateways in one process sharing a :class:`MemoryStore`)."""
        self.config = config
        self._clock = clock
        self._origin = clock()
        for module in config.plugins:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise UserError(f"plugin {module!r} cannot be imported: {error}") from None
        self.policy, self.views, self.model_name = _bind_policy(config)
        #: Engine prompt tokens per estimated token, learned from the answers (one per
        #: gateway: its backends serve one model, whose tokenizer it learns).
        self.token_scale = TokenScale(config.token_scale_prior)
        if config.learn_token_scale:
            for view in self.views:
                view.use_token_scale(self.token_scale)
        self.keys = KeyRing({k: name for name, t in config.tenants.items() for k in t.keys})
        self.admin_keys = KeyRing({k: "admin" for k in config.admin_keys})
        self.store: Store = store if store is not None else build_store(config.store)
        self.metrics = Metrics()
        self.agent_names = AgentNames(config.max_agents_per_tenant)  # bounded per tenant
        self.backends: list[Backend] = []  # built at start()
        self.graph_sync = GraphSync(self.policy.learned_graphs(), config, self.store, self.metrics)
        self.soft_store = SoftStore(self.metrics, self.now)
        self.lifecycle = Lifecycle(self)
        self.pipeline = CallPipeline(self)
        self.http = HttpHandlers(self)

    def now(self) -> float:
        """Seconds since the gateway was built, on its clock."""
        return self._clock() - self._origin

    # ---- the jobs, as the rest of the code and the tests reach them ----------------------
    async def start(self) -> None:
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def handle(self, http: HttpRequest) -> Response | ResponseStream:
        """Answer one request (:meth:`HttpHandlers.handle`)."""
        return await self.http.handle(http)

    @property
    def routes(self) -> RouteTable:
        return self.http.routes

    @property
    def workflows(self) -> dict[str, WorkflowState]:
        """The workflows this gateway has active."""
        return self.pipeline.workflows

    @property
    def retry_budget(self) -> RetryBudget:
        return self.pipeline.retry_budget

    async def stored_op(self, op: str, coro: Coroutine[Any, Any, _T]) -> _T | None:
        """A store operation that fails soft (:meth:`SoftStore.op`)."""
        return await self.soft_store.op(op, coro)

    @property
    def store_down(self) -> bool:
        """Whether the last store operation on the call path failed."""
        return self.soft_store.down

    @property
    def graphs(self) -> GraphStore | None:
        """The policy's learned graphs (None for a policy that learns none)."""
        return self.graph_sync.graphs

    async def sync_graphs(self) -> None:
        """One exchange of learned-graph observations with the other gateways."""
        await self.graph_sync.exchange()

    def app(self) -> web.Application:
        """The same API as an aiohttp application (its startup starts the gateway, its
        cleanup stops it), to embed in an aiohttp server; :func:`serve` is faster."""
        from saga.gateway.aiohttp_front import build_app

        return build_app(self)


def _bind_policy(config: GatewayConfig) -> tuple[Policy, list[RemoteReplicaView], str]:
    """The configured policy bound to one view per backend (its replicas, sized from the
    cluster preset), and the model name served by default."""
    policy = build_policy(config.policy)
    if policy.offline:
        raise UserError(f"policy {config.policy!r} reads the future; the gateway cannot run it")
    cluster = get_cluster(config.cluster)
    model_name = config.served_models[0] if config.served_models else cluster.model
    bt = config.block_tokens
    capacity = cluster.kv_capacity_blocks(bt)
    block_bytes = cluster.cost_model().model.kv_bytes_per_token() * bt
    # an offloading backend's host tier (llama.cpp: slot files on disk) holds at least
    # what its KV holds, whatever the preset's host tier
    host = max(capacity, cluster.host_capacity_blocks(bt))
    cost = cluster.cost_model()
    # one learned speed for the gateway's engines (saga.gateway.engine_speed)
    speed = EngineSpeed() if config.learn_engine_speed else None

    def decode_time(prompt: int, output: int) -> float:
        # the prefill's last step samples the first token
        return cost.decode_steps_time(1, prompt, max(output - 1, 0))

    views = [
        RemoteReplicaView(i, capacity, bt, block_bytes,
                          host if BACKENDS[b.kind].offloads else None,
                          max_concurrency=b.max_concurrency,
                          max_num_batched_tokens=cluster.engine.max_num_batched_tokens,
                          prefill_time=cost.prefill_time, decode_time=decode_time,
                          speed=speed, slots=b.slots if BACKENDS[b.kind].has_slots else None)
        for i, b in enumerate(config.backends)
    ]
    # The views are the policy's replicas (saga.sched.view.ReplicaView).
    ctx = PolicyContext(replicas=views, cost=cost, block_tokens=bt, rng=random.Random(0))
    policy.bind(ctx)
    policy.set_tenant_weights({name: t.weight for name, t in config.tenants.items()})
    return policy, views, model_name


async def serve(config: GatewayConfig, ready: asyncio.Event | None = None) -> None:
    """Run a gateway until cancelled; then let calls in flight finish (10 s at most)."""
    gateway = Gateway(config)
    server = HttpServer(gateway.handle, max_body=config.max_body_bytes)
    await gateway.start()
    try:
        await server.start(config.host, config.port)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await server.close()
        await gateway.stop()
