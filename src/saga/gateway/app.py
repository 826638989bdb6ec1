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

This module is the lifecycle, the HTTP handlers and the call pipeline; the gateway's
other jobs are modules of their own: API keys (:mod:`.auth`), each backend's fair queue
and what the policy reads of it (:mod:`.view`), relaying answers (:mod:`.relay`),
learned-graph sync (:mod:`.graph_sync`) and the ``/metrics`` page (:mod:`.prometheus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from saga.engine.cluster import get_cluster
from saga.errors import UserError
from saga.gateway.agent_names import AgentNames
from saga.gateway.auth import KeyRing, bearer
from saga.gateway.backends import BACKENDS, Backend, BackendError, build_backend
from saga.gateway.config import GatewayConfig
from saga.gateway.graph_sync import GraphSync
from saga.gateway.identity import identify
from saga.gateway.metrics import Metrics
from saga.gateway.openapi import openapi_document
from saga.gateway.prometheus import render_metrics
from saga.gateway.relay import Retryable, forward
from saga.gateway.server import (
    BodyTooLarge,
    HttpRequest,
    HttpServer,
    Response,
    ResponseStream,
    RouteTable,
    error,
)
from saga.gateway.store import MemoryStore, Session, Store, build_store
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.registry import build_policy
from saga.sched.saga.graph import GraphStore
from saga.wire.openai_api import (
    BadRequest,
    ChatRequest,
    CompletionRequest,
    Kind,
    parse_body,
)
from saga.wire.prefix import estimate_tokens, text_runs

if TYPE_CHECKING:
    from aiohttp import web

#: Body fields a client may not pass on to a backend (vLLM reads ``priority``).
_STRIPPED = ("priority",)
log = logging.getLogger("saga.gateway")
_T = TypeVar("_T")
#: Seconds a failed store is left alone before the call path tries it again.
_STORE_RETRY = 1.0


class RetryBudget:
    """Retries as a fraction of calls: each call deposits ``ratio`` tokens, each retry
    takes one, the balance starts at ``reserve`` and never exceeds ``cap``."""

    def __init__(self, ratio: float, reserve: float = 10.0, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.balance = reserve
        self.cap = cap

    def deposit(self) -> None:
        self.balance = min(self.cap, self.balance + self.ratio)

    def take(self) -> bool:
        if self.balance < 1.0:
            return False
        self.balance -= 1.0
        return True


@dataclass(slots=True)
class _Workflow:
    info: WorkflowInfo
    calls: int = 0
    in_flight: int = 0
    last_seen: float = 0.0
    admitted: bool = False
    placed_here: int | None = None  # replica this gateway's policy last chose for it


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
        self.policy: Policy = build_policy(config.policy)
        if self.policy.offline:
            raise UserError(f"policy {config.policy!r} reads the future; the gateway cannot run it")
        cluster = get_cluster(config.cluster)
        self.model_name = config.served_models[0] if config.served_models else cluster.model
        bt = config.block_tokens
        capacity = cluster.kv_capacity_blocks(bt)
        block_bytes = cluster.cost_model().model.kv_bytes_per_token() * bt
        # an offloading backend's host tier (llama.cpp: slot files on disk) holds at least
        # what its KV holds, whatever the preset's host tier
        host = max(capacity, cluster.host_capacity_blocks(bt))
        self.views = [
            RemoteReplicaView(i, capacity, bt, block_bytes,
                              host if BACKENDS[b.kind].offloads else None,
                              max_concurrency=b.max_concurrency,
                              max_num_batched_tokens=cluster.engine.max_num_batched_tokens)
            for i, b in enumerate(config.backends)
        ]
        # The views are the policy's replicas (saga.sched.view.ReplicaView).
        ctx = PolicyContext(
            replicas=self.views, cost=cluster.cost_model(), block_tokens=bt,
            rng=random.Random(0),
        )
        self.policy.bind(ctx)
        self.policy.set_tenant_weights({name: t.weight for name, t in config.tenants.items()})
        self._custom_priority = type(self.policy).queue_key is not Policy.queue_key
        self.keys = KeyRing({k: name for name, t in config.tenants.items() for k in t.keys})
        self.admin_keys = KeyRing({k: "admin" for k in config.admin_keys})
        self.retry_budget = RetryBudget(config.retry_budget)
        self._pending = 0
        self.store: Store = store if store is not None else build_store(config.store)
        self._rng = random.Random(0)  # retry jitter
        self.metrics = Metrics()
        self.agent_names = AgentNames(config.max_agents_per_tenant)  # bounded per tenant
        self.backends: list[Backend] = []
        self.workflows: dict[str, _Workflow] = {}
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.routes = RouteTable()
        self.routes.add("GET", "/openapi.json", self._openapi)
        self.routes.add("POST", "/v1/chat/completions", self._chat)
        self.routes.add("POST", "/v1/completions", self._completions)
        self.routes.add("GET", "/v1/models", self._models)
        self.routes.add("GET", "/health", self._health)
        self.routes.add("GET", "/metrics", self._metrics)
        self.routes.add("GET", "/saga/graph", self._graph)
        self.graph_sync = GraphSync(self.policy.learned_graphs(), config, self.store, self.metrics)
        self._store_down = False
        self._store_retry_at = 0.0
        self._store_logged_at = -1e9
        self._failed_checks = [0] * len(config.backends)

    # ---- lifecycle ------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock() - self._origin

    async def start(self) -> None:
        try:
            await self.store.ping()
        except Exception as error:
            raise UserError(f"store {self.config.store.url} unreachable: {error}") from None
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        timeout = aiohttp.ClientTimeout(
            total=self.config.request_timeout, connect=self.config.connect_timeout
        )
        self.backends = [
            build_backend(i, b, self._session, timeout) for i, b in enumerate(self.config.backends)
        ]
        for backend in self.backends:
            backend.sweep()  # files an earlier run left (llama.cpp slot saves)
        await self._check_health(first=True)
        self._spawn(self._health_loop())
        self._spawn(self._sweep_loop())
        if self.graph_sync.enabled:
            self._spawn(self.graph_sync.loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.graph_sync.enabled:  # what was learned since the last exchange, if it answers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.graph_sync.publish(), 2.0)
        for backend in self.backends:
            backend.close()
        if self._session is not None:
            await self._session.close()
        await self.store.close()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_health(self, first: bool = False) -> None:
        """A passed check marks a backend up; it is marked down after two failed checks
        in a row (one slow answer on a loaded machine is not an outage; at start, one),
        or at once by a call it failed (:func:`~saga.gateway.relay.forward`)."""
        results = await asyncio.gather(*(b.healthy() for b in self.backends))
        for i, (view, ok) in enumerate(zip(self.views, results, strict=True)):
            self._failed_checks[i] = 0 if ok else self._failed_checks[i] + 1
            if ok or first or self._failed_checks[i] >= 2:
                view.up = ok

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            await self._check_health()

    async def _sweep_loop(self) -> None:
        idle = self.config.workflow_idle_timeout
        while True:
            await asyncio.sleep(min(idle / 4, 10.0))
            now = self.now()
            for key, wf in list(self.workflows.items()):
                if wf.in_flight == 0 and now - wf.last_seen > idle:
                    self._end_workflow(key, wf, now)
            if isinstance(self.store, MemoryStore):
                self.store.expire()

    @property
    def store_down(self) -> bool:
        """Whether the last store operation on the call path failed."""
        return self._store_down

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

    # ---- HTTP handlers ------------------------------------------------------------------
    async def handle(self, http: HttpRequest) -> Response | ResponseStream:
        """Answer one request; a bug is a 500 whose traceback goes to the log (never the
        request's headers)."""
        try:
            return await self.routes.dispatch(http)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error on %s %s", http.method, http.path)
            return error(500, "internal error in the gateway", "server_error", "internal_error")

    async def _chat(self, http: HttpRequest) -> Response | ResponseStream:
        return await self._call(http, "chat", "/v1/chat/completions")

    async def _completions(self, http: HttpRequest) -> Response | ResponseStream:
        return await self._call(http, "completion", "/v1/completions")

    async def _models(self, http: HttpRequest) -> Response:
        try:
            self._tenant(http)
        except BadRequest as failure:
            return _error_response(failure)
        names = self.config.served_models or [self.model_name]
        return Response.json(
            {"object": "list", "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "saga"} for n in names
            ]}
        )

    async def _health(self, http: HttpRequest) -> Response:
        up = [b.label for b, v in zip(self.backends, self.views, strict=True) if v.up]
        body = {"status": "ok" if up else "no backend up", "backends_up": len(up),
                "backends": len(self.backends)}
        return Response.json(body, status=200 if up else 503)

    async def _metrics(self, http: HttpRequest) -> Response:
        denied = self._admin_only(http)
        if denied is not None:
            return denied
        return Response(200, (await render_metrics(self)).encode(),
                        content_type="text/plain; charset=utf-8")

    async def _graph(self, http: HttpRequest) -> Response:
        """The policy's learned Agent Execution Graphs (``learning`` false and no agents
        for a policy that learns none)."""
        denied = self._admin_only(http)
        if denied is not None:
            return denied
        graphs = self.graphs
        return Response.json({"policy": self.config.policy, "learning": graphs is not None,
                              "agents": graphs.snapshot() if graphs is not None else {}})

    def _admin_only(self, http: HttpRequest) -> Response | None:
        """The refusal unless the request has an admin key or ``public_metrics`` is set
        (closed by default: with no admin key configured nobody gets in)."""
        if self.config.public_metrics:
            return None
        key = bearer(http)
        if key and self.admin_keys.lookup(key) is not None:
            return None
        status = 403 if key and self.keys.lookup(key) is not None else 401
        hint = "" if len(self.admin_keys) else \
            " (none is configured: set admin_keys, or public_metrics = true)"
        return error(status, f"{http.path} needs an admin key{hint}", "authentication_error",
                     "admin_key_required")

    async def _openapi(self, http: HttpRequest) -> Response:
        return Response.json(openapi_document(self.config))

    async def _call(self, http: HttpRequest, kind: Kind, path: str) -> Response | ResponseStream:
        tenant = "-"
        cfg = self.config
        if self._pending >= cfg.max_pending:
            self.metrics.shed["pending"] += 1
            self.metrics.requests[(tenant, 429)] += 1
            return error(429, f"gateway overloaded: {cfg.max_pending} calls pending",
                         "overloaded", "gateway_overloaded", {"Retry-After": "1"})
        self._pending += 1
        try:
            tenant = self._tenant(http)
            length = http.content_length
            if length is not None and length > cfg.max_body_bytes:
                raise _too_large(cfg.max_body_bytes)
            try:
                raw = await http.read()
            except BodyTooLarge:
                raise _too_large(cfg.max_body_bytes) from None
            body, data = parse_body(raw, kind)
            response = await self._serve(http, kind, path, tenant, body, data, raw)
        except BadRequest as failure:
            self.metrics.requests[(tenant, failure.status)] += 1
            return _error_response(failure)
        finally:
            self._pending -= 1
        self.metrics.requests[(tenant, response.status)] += 1
        return response

    def _tenant(self, http: HttpRequest) -> str:
        if not self.config.tenants:
            return "default"
        key = bearer(http)
        if not key:
            raise BadRequest(401, "missing API key: send 'Authorization: Bearer <key>'",
                             "authentication_error", "missing_api_key")
        tenant = self.keys.lookup(key)
        if tenant is None:
            raise BadRequest(401, "unknown API key", "authentication_error", "invalid_api_key")
        return tenant

    # ---- one call -------------------------------------------------------------------------
    async def _serve(
        self, http: HttpRequest, kind: Kind, path: str, tenant: str,
        body: ChatRequest | CompletionRequest, data: dict[str, Any], raw: bytes,
    ) -> Response | ResponseStream:
        cfg = self.config
        if cfg.served_models and body.model not in cfg.served_models:
            raise BadRequest(404, f"model {body.model!r} not found; served: "
                             f"{', '.join(cfg.served_models)}", code="model_not_found")
        arrived = self.now()
        who = identify(http.headers, data)
        workflow_id = f"{tenant}/{who.workflow}"
        agent = self.agent_names.resolve(tenant, who.agent)
        tool, ends = who.tool, who.ends
        max_tokens = body.output_limit(cfg.default_max_tokens)
        if max_tokens > cfg.max_output_tokens:
            raise BadRequest(400, f"max_tokens {max_tokens} exceeds this gateway's limit "
                             f"({cfg.max_output_tokens})", code="max_tokens_too_large")
        # the client's bytes go on unchanged unless the body must change
        edited = False
        for name in _STRIPPED:
            if name in data:
                del data[name]
                edited = True
        if body.stream and not body.include_usage():  # the gateway counts tokens
            data["stream_options"] = {**(body.stream_options or {}), "include_usage": True}
            edited = True
        text = body.text()
        prompt_tokens = estimate_tokens(text)
        runs = text_runs(text, cfg.block_tokens)

        wf = self.workflows.get(workflow_id)
        if wf is None:
            if len(self.workflows) >= cfg.max_workflows:
                self.metrics.shed["workflows"] += 1
                raise BadRequest(429, f"gateway overloaded: {cfg.max_workflows} workflows "
                                 "active", "overloaded", "too_many_workflows",
                                 {"Retry-After": "1"})
            slo = cfg.tenants[tenant].slo if tenant in cfg.tenants else None
            wf = _Workflow(WorkflowInfo(workflow_id, tenant, agent, arrived, slo))
            self.workflows[workflow_id] = wf
        wf.last_seen = arrived
        wf.in_flight += 1
        # header-safe (a ``user`` may hold any character); the client sees its scoped id
        wire_id = urllib.parse.quote(workflow_id, safe="/:@-_.~+=")
        extra_headers: dict[str, str] = {"x-saga-workflow": wire_id}
        try:
            session = await self.stored_op("session", self.store.session(workflow_id))
            if session is None:  # the store is down: serve on this gateway's own state
                session = Session(None, False)
            if not (wf.admitted or session.admitted):
                note = await self._admit(wf)
                if note:
                    extra_headers["x-saga-admission"] = note
                await self.stored_op("admitted",
                                   self.store.mark_admitted(workflow_id, cfg.session_ttl))
            wf.admitted = True
            now = self.now()
            self._seq += 1
            seq = self._seq  # this call's: other calls move the counter while this one waits
            info = CallInfo(
                workflow=workflow_id, tenant=tenant, agent=agent, call_id=f"{wf.calls}",
                index=wf.calls, tool=tool, prompt_tokens=prompt_tokens, runs=runs,
                issued_at=now, workflow_arrival=wf.info.arrival, slo=wf.info.slo,
                ends_workflow=ends,
            )
            wf.calls += 1
            self.retry_budget.deposit()
            index = await self._place(info, session.home, now, wf)
            attempt = 0
            failed: set[int] = set()  # backends that failed this call: a retry goes elsewhere
            while True:
                request = GatewayCall(info, max_tokens, cfg.block_tokens, seq, now)
                view = self.views[index]
                backend = self.backends[index]
                await self._acquire(index, request, tenant)
                sent_at = self.now()
                prepared = False
                try:
                    view.kv.add(runs)
                    out_headers = {"Content-Type": "application/json",
                                   "x-saga-workflow": wire_id}
                    key = None
                    if backend.takes_priority and self._custom_priority:
                        key = self.policy.queue_key(view, request, now)
                    sent = dict(data)  # the backend adapts its own copy
                    await backend.prepare(workflow_id, sent, out_headers, key, info)
                    prepared = True
                    # what was validated goes on: the client's bytes when nothing changed
                    # (JSON readers of the engines keep the last of repeated keys, as here)
                    unchanged = not edited and _same(sent, data)
                    payload = raw if unchanged else json.dumps(sent).encode()
                    extra_headers["x-saga-backend"] = str(index)
                    response, tokens = await forward(
                        self.metrics, http, backend, view, path, body, payload, out_headers,
                        extra_headers,
                    )
                    break
                except Retryable as failure:
                    failed.add(index)
                    if attempt >= cfg.retries or not self.retry_budget.take():
                        raise failure.error from None
                except asyncio.CancelledError:
                    # the client left: the backend call is closed; tell the policy it ended
                    self.metrics.client_disconnects += 1
                    self.policy.on_call_finished(info, index, self.now())
                    raise
                finally:
                    if prepared:
                        backend.finished(workflow_id)
                    self._release(index, request)
                attempt += 1
                self.metrics.retries += 1
                await asyncio.sleep(cfg.retry_backoff * 2 ** (attempt - 1)
                                    * (0.5 + self._rng.random()))
                now = self.now()
                index = await self._place(info, None, now, wf, retry=True, exclude=failed)
                extra_headers["x-saga-retries"] = str(attempt)
            self._finished(wf, info, request, index, arrived, sent_at, tokens)
            return response
        finally:
            wf.in_flight -= 1
            if ends and workflow_id in self.workflows and wf.in_flight == 0:
                self._end_workflow(workflow_id, wf, self.now())

    def _end_workflow(self, key: str, wf: _Workflow, now: float) -> None:
        """A workflow is over (its last call, or idle): the policy and the backends
        forget it (llama.cpp: its slot and saved slot file go)."""
        del self.workflows[key]
        self.policy.on_workflow_finished(wf.info, now)
        for backend in self.backends:
            backend.forget(key)

    async def stored_op(self, op: str, coro: Coroutine[Any, Any, _T]) -> _T | None:
        """A store operation on the call path; if the store fails (down, hung: its
        commands time out), None, counted and logged (once per 30 s at most), so that calls go
        on without shared state rather than fail. After a failure the operations of the
        next second are skipped (counted), then one is tried again: a hung store costs
        one timeout a second, not one per call."""
        now = self.now()
        if self._store_down and now < self._store_retry_at:
            coro.close()
            self.metrics.store_skipped[op] += 1
            return None
        try:
            result = await coro
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.metrics.store_errors[op] += 1
            self._store_retry_at = self.now() + _STORE_RETRY
            if not self._store_down:
                self._store_down = True
                if self.now() - self._store_logged_at >= 30.0:  # a flapping store: rarely
                    self._store_logged_at = self.now()
                    log.warning("store unavailable (%s: %s); serving without shared state",
                                op, type(error).__name__)
            return None
        if self._store_down:
            self._store_down = False
        return result

    async def _admit(self, wf: _Workflow) -> str:
        """Ask the policy until it admits; return a note if the workflow was deferred."""
        started = self.now()
        deadline = started + self.config.max_defer
        reason = ""
        while True:
            now = self.now()
            t0 = time.perf_counter()
            decision = self.policy.admit(wf.info, now)
            self.metrics.decision_latency.observe(time.perf_counter() - t0)
            self.metrics.admissions[decision.verdict] += 1
            if decision.verdict == "admit":
                if not reason:
                    return ""
                return f"deferred {now - started:.3f}s: {reason}"
            if decision.verdict == "reject":
                raise BadRequest(429, f"workflow rejected: {decision.reason or 'no reason given'}",
                                 "workflow_rejected", "workflow_rejected")
            reason = decision.reason or "no reason given"
            wait = max(decision.retry_after, 0.001)
            if now + wait > deadline:
                self.policy.on_admission_withdrawn(wf.info, now)
                raise BadRequest(
                    429, f"workflow deferred for longer than max_defer "
                    f"({self.config.max_defer:g}s): {reason}", "workflow_deferred",
                    "workflow_deferred", {"Retry-After": str(max(1, round(wait)))},
                )
            self.metrics.admission_waiting += 1
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:  # the client went away while deferred
                self.policy.on_admission_withdrawn(wf.info, self.now())
                raise
            finally:
                self.metrics.admission_waiting -= 1

    async def _place(
        self, info: CallInfo, home: int | None, now: float, wf: _Workflow, retry: bool = False,
        exclude: set[int] | None = None,
    ) -> int:
        """The replica for a call. The policy observes every call (its graphs learn) and
        places it, stealing included, when this gateway placed the workflow's last call
        (so the policy's own state is current). With ``sticky_sessions``, a workflow
        whose home another gateway chose (in the shared store) stays there."""
        t0 = time.perf_counter()
        # a retry excludes the backends that failed the call: the policy sees them down
        # for this decision (unless none other is up)
        hidden = [i for i in exclude or () if self.views[i].up]
        if hidden and any(v.up for i, v in enumerate(self.views) if i not in hidden):
            for i in hidden:
                self.views[i].up = False
        else:
            hidden = []
        try:
            index = self._choose_replica(info, home, now, wf, retry)
        finally:
            for i in hidden:
                self.views[i].up = True
            self.metrics.decision_latency.observe(time.perf_counter() - t0)
        if index != home:
            await self.stored_op("home", self.store.set_home(info.workflow, index,
                                                           self.config.session_ttl))
        return index

    def _choose_replica(
        self, info: CallInfo, home: int | None, now: float, wf: _Workflow, retry: bool
    ) -> int:
        """The scheduler core's part of :meth:`_place` (what decision latency measures)."""
        if not retry:
            self.policy.on_call_ready(info, now)
        if self.config.sticky_sessions and home is not None and home != wf.placed_here \
                and 0 <= home < len(self.views) and self.views[home].up:
            return home
        try:
            index = self.policy.place(info, now)
        except RuntimeError as error:  # "no replica is up"
            raise BadRequest(503, f"no backend available: {error}", "service_unavailable",
                             "no_backend") from None
        wf.placed_here = index
        return index

    # ---- per-backend concurrency, fair across tenants (the view's queue) ------------------
    async def _acquire(self, index: int, call: GatewayCall, tenant: str) -> None:
        view = self.views[index]
        if view.try_start(call, self.now()):
            return
        if len(view.waiting) >= self.config.max_queue:
            self.metrics.shed["queue"] += 1
            raise BadRequest(429, f"backend {self.backends[index].label} has "
                             f"{len(view.waiting)} calls waiting", "overloaded",
                             "backend_queue_full", {"Retry-After": "1"})
        weight = self.config.tenants[tenant].weight if tenant in self.config.tenants else 1.0
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call.slot = slot
        view.enqueue(call, weight)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self._release(index, call)  # got the slot as the client left
            else:
                view.withdraw(call)
            raise
        finally:
            call.slot = None

    def _release(self, index: int, call: GatewayCall) -> None:
        for started in self.views[index].finish(call, self.now(), _still_waiting):
            assert started.slot is not None
            started.slot.set_result(None)

    def _finished(
        self, wf: _Workflow, info: CallInfo, request: GatewayCall, index: int, arrived: float,
        sent_at: float, tokens: int,
    ) -> None:
        now = self.now()
        latency = now - arrived
        backend_time = max(now - sent_at, 1e-9)
        m = self.metrics
        m.tenant_latency[info.tenant].observe(latency)
        m.tenant_slowdown[info.tenant].observe(latency / backend_time)
        if info.slo is not None:  # the gateway's share of the SLO: its queueing inflation
            m.tenant_slo[(info.tenant, latency / backend_time <= info.slo)] += 1
        self.policy.on_call_finished(info, index, now)
        request.served(tokens)  # the blocks the finished call left: retention's input
        t0 = time.perf_counter()
        view = self.views[index]
        decision = self.policy.retention(view, request, now)
        m.decision_latency.observe(time.perf_counter() - t0)
        view.note_retention(info.workflow, decision, now, request)
        m.retentions[decision.kind] += 1
        backend = self.backends[index]
        if decision.kind != "release" and backend.retains:
            self._spawn(self._retain(backend, info.workflow, decision, now))
        record = self.store.record_call(info.tenant, info.agent, info.tool, tokens, latency)
        if isinstance(self.store, MemoryStore):
            _run_now(record)  # never suspends: no task needed
        else:
            self._spawn(self.stored_op("record", record))

    async def _retain(
        self, backend: Backend, workflow: str, decision: Retention, now: float
    ) -> None:
        try:
            await backend.retain(workflow, decision, now)
        except BackendError:
            self.metrics.retention_errors += 1


def _run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends to its end, synchronously."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("coroutine suspended")


def _same(sent: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether a backend's :meth:`~Backend.prepare` left its (shallow) copy of the body
    as it was: the same keys bound to the same objects (it replaces what it changes)."""
    return len(sent) == len(data) and all(sent.get(k) is v for k, v in data.items())


def _still_waiting(call: GatewayCall) -> bool:
    """A queued call whose client has not left (its slot future is not cancelled)."""
    return call.slot is not None and not call.slot.done()


def _error_response(failure: BadRequest) -> Response:
    return error(failure.status, failure.message, failure.kind, failure.code, failure.headers)


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, f"request body larger than {limit} bytes", code="body_too_large")


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
