"""The gateway: an OpenAI-compatible HTTP front that asks the scheduler core.

For every call: find the tenant (API key) and the workflow (headers, or the
fallback below), admit the workflow (the policy may defer it: the call waits here,
or gets a 429 after ``max_defer``), place the call (the policy, or the workflow's
home replica from the store), wait for a slot at that replica (weighted fair
queueing across tenants when the replica is at its concurrency limit), forward the
call, stream the answer back, then tell the policy and carry out its retention
decision through the backend.

Workflow identity, in order: header ``x-saga-workflow``; the body's ``user``; else
``auto:`` + a hash of the first two chat messages (for completions, of the first
1024 prompt characters), so that the turns of one conversation, which repeat its
start, map to one workflow. Ids are per tenant. ``x-saga-agent`` names the agent
program (default ``default``), ``x-saga-tool`` the tool that ran before this call,
``x-saga-end: true`` marks the workflow's last call (without it a workflow ends
after ``workflow_idle_timeout``).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib
import json
import logging
import random
import re
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from saga.engine.cluster import get_cluster
from saga.errors import UserError
from saga.gateway.backends import BACKENDS, Backend, BackendError, build_backend
from saga.gateway.config import GatewayConfig
from saga.gateway.metrics import Metrics, PromText
from saga.gateway.openapi import openapi_document
from saga.gateway.server import (
    BodyTooLarge,
    HttpRequest,
    HttpServer,
    Response,
    ResponseStream,
    RouteTable,
    error,
)
from saga.gateway.store import FIRST_CURSOR, MemoryStore, Store, build_store
from saga.gateway.upstream import UpstreamError, UpstreamResponse
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.registry import build_policy
from saga.sched.saga.graph import GraphStore, Observation
from saga.wire.openai_api import (
    BadRequest,
    ChatRequest,
    CompletionRequest,
    Kind,
    parse_body,
)
from saga.wire.prefix import chat_text, estimate_tokens, text_runs

if TYPE_CHECKING:
    from aiohttp import web

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no", ""}
_MAX_HEADER = 256
#: Body fields a client may not pass on to a backend (vLLM reads ``priority``).
_STRIPPED = ("priority",)
#: ``"usage": {...  "total_tokens": N`` with no nested object before it (OpenAI, vLLM,
#: the emulator); JSON strings escape quotes, so ``"usage"`` is always a key.
_USAGE_TOTAL = re.compile(rb'"usage"\s*:\s*\{[^{}]*?"total_tokens"\s*:\s*(\d+)')
#: Graph sync reads the log in pages of this many entries, at most this many pages per
#: exchange: a gateway catching up on a long log does it over several exchanges, each
#: applying a bounded amount between two awaits.
_SYNC_PAGE_ENTRIES = 64
_SYNC_PAGES = 16
log = logging.getLogger("saga.gateway")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """API keys to names, compared in constant time: the presented key's SHA-256 is
    compared with every stored digest by :func:`hmac.compare_digest`, with no early
    exit, so the time taken says nothing about which bytes matched."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._entries = [(_digest(k), name) for k, name in keys.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> str | None:
        presented = _digest(key)
        found: str | None = None
        for digest, name in self._entries:
            if hmac.compare_digest(presented, digest):
                found = name
        return found


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


class _Retryable(Exception):
    """The backend failed before any byte reached the client: the call may go again."""

    def __init__(self, error: BadRequest) -> None:
        super().__init__(error.message)
        self.error = error


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
        self._setup_graph_sync()

    def _setup_graph_sync(self) -> None:
        """Record what the policy's graphs learn, for :meth:`sync_graphs` to publish."""
        self.graphs: GraphStore | None = self.policy.learned_graphs()
        self._sync = self.graphs is not None and bool(self.config.graph_sync_interval)
        # a fresh id per process: a restarted gateway lost what it learned, so it reads
        # its former self's observations as another gateway's
        self.gateway_id = uuid.uuid4().hex
        self._outbox: deque[Observation] = deque(maxlen=self.config.graph_sync_backlog)
        self._graph_cursor = FIRST_CURSOR
        self._sync_failing = False
        if self._sync and self.graphs is not None:
            self.graphs.set_sink(self._record_observation)

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
        await self._check_health()
        self._spawn(self._health_loop())
        self._spawn(self._sweep_loop())
        if self._sync:
            self._spawn(self._graph_sync_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sync:  # what was learned since the last exchange, if the store answers
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publish_observations(), 2.0)
        for backend in self.backends:
            backend.close()
        if self._session is not None:
            await self._session.close()
        await self.store.close()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_health(self) -> None:
        results = await asyncio.gather(*(b.healthy() for b in self.backends))
        for view, ok in zip(self.views, results, strict=True):
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
                    del self.workflows[key]
                    self.policy.on_workflow_finished(wf.info, now)
            if isinstance(self.store, MemoryStore):
                self.store.expire()

    # ---- learned graphs, shared through the store ------------------------------------------
    async def _graph_sync_loop(self) -> None:
        interval = self.config.graph_sync_interval or 1.0
        while True:  # at once first: a new gateway starts from what the others learned
            await self.sync_graphs()
            await asyncio.sleep(interval)

    def _record_observation(self, observation: Observation) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            self.metrics.graph_observations["dropped"] += 1
        self._outbox.append(observation)

    async def sync_graphs(self) -> None:
        """One exchange of learned-graph observations with the other gateways: publish
        what this gateway's graphs observed, then learn what the others published.

        A store error is logged and counted, never raised: calls are served meanwhile,
        unpublished observations are kept for the next exchange (at most
        ``graph_sync_backlog``) and reading resumes from the same cursor."""
        if not self._sync or self.graphs is None:
            return
        published = await self._publish_observations()
        fetched = await self._apply_observations(self.graphs)
        if published and fetched and self._sync_failing:
            self._sync_failing = False
            log.info("graph sync: the store answers again")

    async def _publish_observations(self) -> bool:
        if not self._outbox:
            return True
        batch = list(self._outbox)
        self._outbox.clear()  # what is observed while publishing queues behind the batch
        try:
            await self.store.publish_observations(self.gateway_id, batch)
        except asyncio.CancelledError:
            self._requeue(batch)  # stop() publishes it last
            raise
        except Exception as failure:  # any store error: serving must go on
            self._requeue(batch)
            self._graph_sync_failed("publish", failure)
            return False
        self.metrics.graph_observations["published"] += len(batch)
        return True

    def _requeue(self, batch: list[Observation]) -> None:
        """Put an unpublished batch back before what was observed meanwhile; beyond
        ``graph_sync_backlog`` the oldest go (the newest describe the agents best)."""
        kept = [*batch, *self._outbox]
        self._outbox.clear()
        self._outbox.extend(kept)
        self.metrics.graph_observations["dropped"] += len(kept) - len(self._outbox)

    async def _apply_observations(self, graphs: GraphStore) -> bool:
        for _ in range(_SYNC_PAGES):
            try:
                cursor, batch = await self.store.fetch_observations(
                    self.gateway_id, self._graph_cursor, _SYNC_PAGE_ENTRIES)
            except Exception as failure:  # any store error: serving must go on
                self._graph_sync_failed("fetch", failure)
                return False
            if cursor == self._graph_cursor:
                break
            self._graph_cursor = cursor
            self.metrics.graph_observations["applied"] += graphs.apply(batch)
        return True

    def _graph_sync_failed(self, op: str, failure: Exception) -> None:
        self.metrics.graph_sync_errors[op] += 1
        if not self._sync_failing:  # once per outage, not every interval
            self._sync_failing = True
            log.warning("graph sync: %s failed, retrying every %gs: %r", op,
                        self.config.graph_sync_interval, failure)

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
        return Response(200, (await self.render_metrics()).encode(),
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
        """The refusal when admin keys are set and the request has none of them."""
        if not len(self.admin_keys):
            return None
        key = _bearer(http)
        if key and self.admin_keys.lookup(key) is not None:
            return None
        status = 403 if key and self.keys.lookup(key) is not None else 401
        return error(status, f"{http.path} needs an admin key", "authentication_error",
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
        key = _bearer(http)
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
        headers = http.headers
        workflow_id = f"{tenant}/{self._workflow_id(_name(headers, 'x-saga-workflow'), body)}"
        agent = _name(headers, "x-saga-agent") or "default"
        tool = _name(headers, "x-saga-tool") or None
        ends = _flag(headers.get("x-saga-end"), "x-saga-end")
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
            session = await self.store.session(workflow_id)
            if not (wf.admitted or session.admitted):
                note = await self._admit(wf)
                if note:
                    extra_headers["x-saga-admission"] = note
                await self.store.mark_admitted(workflow_id, cfg.session_ttl)
            wf.admitted = True
            now = self.now()
            self._seq += 1
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
            while True:
                request = GatewayCall(info, max_tokens, cfg.block_tokens, self._seq, now)
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
                    response, tokens = await self._forward(
                        http, backend, view, path, body, payload, out_headers, extra_headers
                    )
                    break
                except _Retryable as failure:
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
                index = await self._place(info, None, now, wf, retry=True)
                extra_headers["x-saga-retries"] = str(attempt)
            self._finished(wf, info, request, index, arrived, sent_at, tokens)
            return response
        finally:
            wf.in_flight -= 1
            if ends and workflow_id in self.workflows and wf.in_flight == 0:
                del self.workflows[workflow_id]
                self.policy.on_workflow_finished(wf.info, self.now())

    def _workflow_id(self, header: str | None, body: ChatRequest | CompletionRequest) -> str:
        if header:
            return header
        if body.user:
            return "user:" + body.user
        if isinstance(body, ChatRequest):
            seed = chat_text({"role": m.role, "content": m.content} for m in body.messages[:2])
        else:
            seed = body.text()[:1024]
        return "auto:" + hashlib.blake2b(seed.encode(), digest_size=8).hexdigest()

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
        self, info: CallInfo, home: int | None, now: float, wf: _Workflow, retry: bool = False
    ) -> int:
        """The replica for a call. The policy observes every call (its graphs learn) and
        places it, stealing included, when this gateway placed the workflow's last call
        (so the policy's own state is current). With ``sticky_sessions``, a workflow
        whose home another gateway chose (in the shared store) stays there."""
        t0 = time.perf_counter()
        try:
            index = self._choose_replica(info, home, now, wf, retry)
        finally:
            self.metrics.decision_latency.observe(time.perf_counter() - t0)
        if index != home:
            await self.store.set_home(info.workflow, index, self.config.session_ttl)
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

    # ---- forwarding ---------------------------------------------------------------------
    async def _forward(
        self, http: HttpRequest, backend: Backend, view: RemoteReplicaView, path: str,
        body: ChatRequest | CompletionRequest, payload: bytes,
        out_headers: dict[str, str], extra_headers: dict[str, str],
    ) -> tuple[Response | ResponseStream, int]:
        """Send the call and relay the answer; return it and the tokens served.

        Raises :class:`_Retryable` when the backend failed before anything was sent
        to the client. When the client leaves (a failed write, or the handler is
        cancelled) the backend connection is closed, which cancels the call there.
        """
        try:
            upstream = await backend.send(path, payload, out_headers)
        except BackendError as failure:
            if not failure.timeout:
                view.up = False
            code = "backend_timeout" if failure.timeout else "backend_unreachable"
            raise _Retryable(BadRequest(504 if failure.timeout else 502, str(failure),
                                        "backend_error", code)) from None
        done = False
        try:
            if upstream.status >= 500:
                text = (await _read_quietly(upstream))[:200].decode("utf-8", "replace")
                raise _Retryable(BadRequest(
                    502, f"backend {backend.label} answered {upstream.status}: {text}",
                    "backend_error", "backend_failed"))
            if upstream.status != 200 or not body.stream:
                answer = await self._read_answer(upstream, backend, view, extra_headers)
                done = True
                tokens = _usage_tokens(answer.body) if upstream.status == 200 else 0
                return answer, tokens
            stream = await http.stream(200, {
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache", **extra_headers
            })
            tokens, done = await self._relay(upstream, stream, backend, view,
                                             client_usage=body.include_usage())
            return stream, tokens
        finally:
            if done:
                upstream.release()
            else:
                upstream.close()

    async def _read_answer(
        self, upstream: UpstreamResponse, backend: Backend, view: RemoteReplicaView,
        extra_headers: dict[str, str],
    ) -> Response:
        """A whole (not streamed) answer, or :class:`_Retryable`."""
        try:
            payload = await upstream.read()
        except TimeoutError:
            raise _Retryable(BadRequest(504, f"backend {backend.label} timed out",
                                        "backend_error", "backend_timeout")) from None
        except UpstreamError as failure:
            view.up = False
            raise _Retryable(BadRequest(502, f"backend {backend.label} failed: {failure}",
                                        "backend_error", "backend_failed")) from None
        headers = extra_headers
        retry_after = upstream.headers.get("retry-after")
        if retry_after is not None:
            headers = {**extra_headers, "Retry-After": retry_after}
        return Response(upstream.status, payload, headers,
                        upstream.content_type or "application/json")

    async def _relay(
        self, upstream: UpstreamResponse, stream: ResponseStream, backend: Backend,
        view: RemoteReplicaView, client_usage: bool,
    ) -> tuple[int, bool]:
        """Relay an event stream; return the tokens served and whether it ended well.

        The gateway asked for the usage chunk (``include_usage``) to count tokens; it is
        kept from a client that did not ask for it. A backend failing mid-stream ends the
        stream with an ``error`` event, as OpenAI does (the status is sent already)."""
        tokens = 0
        try:
            while (piece := await upstream.read_lines()) is not None:
                if b'"usage"' in piece:
                    piece, found = _take_usage(piece, keep=client_usage)
                    tokens = found or tokens
                if piece and not await stream.write(piece):
                    self.metrics.client_disconnects += 1
                    return tokens, False  # the client left: close the backend call
            await stream.finish()
            return tokens, True
        except (TimeoutError, UpstreamError) as failure:
            view.up = isinstance(failure, TimeoutError)
            message = json.dumps({"error": {"message": f"backend {backend.label} failed "
                                            f"mid-stream: {failure!r}", "type": "backend_error"}})
            await stream.write(b"data: " + message.encode() + b"\n\n")
            return tokens, False

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
        self.policy.on_call_finished(info, index, now)
        t0 = time.perf_counter()
        view = self.views[index]
        decision = self.policy.retention(view, request, now)
        m.decision_latency.observe(time.perf_counter() - t0)
        view.note_retention(info.workflow, decision, now)
        m.retentions[decision.kind] += 1
        backend = self.backends[index]
        if decision.kind != "release" and backend.retains:
            self._spawn(self._retain(backend, info.workflow, decision, now))
        record = self.store.record_call(info.tenant, info.agent, info.tool, tokens, latency)
        if isinstance(self.store, MemoryStore):
            _run_now(record)  # never suspends: no task needed
        else:
            self._spawn(record)

    async def _retain(
        self, backend: Backend, workflow: str, decision: Retention, now: float
    ) -> None:
        try:
            await backend.retain(workflow, decision, now)
        except BackendError:
            self.metrics.retention_errors += 1

    # ---- metrics -------------------------------------------------------------------------
    async def render_metrics(self) -> str:
        m = self.metrics
        p = PromText()
        p.family("saga_requests_total", "counter", "Calls answered, by tenant and HTTP status.")
        for (tenant, status), n in sorted(m.requests.items()):
            p.sample("saga_requests_total", n, (("tenant", tenant), ("status", str(status))))
        p.family("saga_queue_length", "gauge", "Calls waiting at the gateway.")
        p.sample("saga_queue_length", m.admission_waiting, (("queue", "admission"),))
        for b, view in zip(self.backends, self.views, strict=True):
            p.sample("saga_queue_length", len(view.waiting),
                     (("queue", "dispatch"), ("backend", b.label)))
        p.family("saga_replica_in_flight", "gauge", "Calls sent to a backend and not done.")
        p.family("saga_replica_up", "gauge", "1 if the backend passed its last health check.")
        p.family("saga_replica_cached_blocks", "gauge", "Blocks in the approximate prefix index.")
        for b, v in zip(self.backends, self.views, strict=True):
            labels = (("backend", b.label),)
            p.sample("saga_replica_in_flight", len(v.running), labels)
            p.sample("saga_replica_up", 1 if v.up else 0, labels)
            p.sample("saga_replica_cached_blocks", v.kv.used_blocks, labels)
        stats = await asyncio.gather(*(b.prefix_cache() for b in self.backends))
        for name, what in (("queries", "looked up in"), ("hits", "found in")):
            if all(st is None for st in stats):
                break
            family = f"saga_backend_prefix_cache_{name}_total"
            p.family(family, "counter",
                     f"Prompt tokens the engine {what} its prefix cache (its own metrics).")
            for b, st in zip(self.backends, stats, strict=True):
                if st is not None:
                    p.sample(family, st.queries if name == "queries" else st.hits,
                             (("backend", b.label),))
        p.family("saga_tenant_slowdown", "summary",
                 "Per call: gateway latency over backend latency (queueing inflation).")
        for tenant, s in sorted(m.tenant_slowdown.items()):
            p.summary("saga_tenant_slowdown", s, (("tenant", tenant),))
        p.family("saga_tenant_latency_seconds", "summary", "Per call latency at the gateway.")
        for tenant, s in sorted(m.tenant_latency.items()):
            p.summary("saga_tenant_latency_seconds", s, (("tenant", tenant),))
        p.family("saga_tenant_tokens_total", "counter",
                 "Tokens served per tenant (shared store: all gateways).")
        for tenant, tokens in sorted((await self.store.tenant_tokens()).items()):
            p.sample("saga_tenant_tokens_total", tokens, (("tenant", tenant),))
        p.family("saga_admission_decisions_total", "counter", "Admission verdicts.")
        for verdict, n in sorted(m.admissions.items()):
            p.sample("saga_admission_decisions_total", n, (("verdict", verdict),))
        p.family("saga_retention_decisions_total", "counter", "Retention decisions by kind.")
        for kind, n in sorted(m.retentions.items()):
            p.sample("saga_retention_decisions_total", n, (("kind", kind),))
        p.family("saga_retention_errors_total", "counter", "KV control calls that failed.")
        p.sample("saga_retention_errors_total", m.retention_errors)
        p.family("saga_decision_latency_seconds", "summary", "Time in the scheduler core.")
        p.summary("saga_decision_latency_seconds", m.decision_latency)
        p.family("saga_retries_total", "counter", "Backend calls made again after a failure.")
        p.sample("saga_retries_total", m.retries)
        p.family("saga_client_disconnects_total", "counter",
                 "Calls whose client left before the end (backend call closed).")
        p.sample("saga_client_disconnects_total", m.client_disconnects)
        p.family("saga_shed_total", "counter", "Calls refused with a 429 at a bound.")
        for bound, n in sorted(m.shed.items()):
            p.sample("saga_shed_total", n, (("bound", bound),))
        p.family("saga_workflows_active", "gauge", "Workflows this gateway is tracking.")
        p.sample("saga_workflows_active", len(self.workflows))
        if self._sync:
            self._render_graph_sync(p)
        return p.text()

    def _render_graph_sync(self, p: PromText) -> None:
        m = self.metrics
        p.family("saga_graph_observations_total", "counter",
                 "Learned-graph observations shared through the store: published by this "
                 "gateway, applied from the others, dropped (backlog full).")
        for event in ("published", "applied", "dropped"):
            p.sample("saga_graph_observations_total", m.graph_observations[event],
                     (("event", event),))
        p.family("saga_graph_sync_errors_total", "counter",
                 "Store errors in graph sync, by operation (retried every interval).")
        for op in ("publish", "fetch"):
            p.sample("saga_graph_sync_errors_total", m.graph_sync_errors[op], (("op", op),))
        p.family("saga_graph_sync_backlog", "gauge", "Observations waiting to be published.")
        p.sample("saga_graph_sync_backlog", len(self._outbox))


def _run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends to its end, synchronously."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("coroutine suspended")


async def _read_quietly(upstream: UpstreamResponse) -> bytes:
    """The body of an answer that is an error already: what could be read of it."""
    try:
        return await upstream.read()
    except (TimeoutError, UpstreamError):
        return b""


def _same(sent: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether a backend's :meth:`~Backend.prepare` left its (shallow) copy of the body
    as it was: the same keys bound to the same objects (it replaces what it changes)."""
    return len(sent) == len(data) and all(sent.get(k) is v for k, v in data.items())


def _still_waiting(call: GatewayCall) -> bool:
    """A queued call whose client has not left (its slot future is not cancelled)."""
    return call.slot is not None and not call.slot.done()


def _error_response(failure: BadRequest) -> Response:
    return error(failure.status, failure.message, failure.kind, failure.code, failure.headers)


def _take_usage(piece: bytes, keep: bool) -> tuple[bytes, int]:
    """Find the usage chunk (``"choices": []``) among the lines of an event stream;
    return the lines (without it unless ``keep``) and its total tokens (0: none)."""
    tokens = 0
    lines = piece.splitlines(keepends=True)
    kept = []
    for line in lines:
        if line.startswith(b"data: {") and b'"usage"' in line and (
            b'"choices": []' in line or b'"choices":[]' in line
        ):
            tokens = _usage_tokens(line[6:])
            if not keep:
                continue
        kept.append(line)
    return (piece if len(kept) == len(lines) else b"".join(kept)), tokens


def _bearer(http: HttpRequest) -> str:
    scheme, _, key = http.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _name(headers: Any, name: str) -> str | None:
    """A name header (workflow, agent, tool): at most 256 printable characters."""
    raw: str | None = headers.get(name)
    if raw is None:
        return None
    if len(raw) > _MAX_HEADER or not raw.isprintable():
        raise BadRequest(400, f"header {name}: expected at most {_MAX_HEADER} printable "
                         f"characters, got {len(raw)}", code="bad_header")
    return raw.strip()


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, f"request body larger than {limit} bytes", code="body_too_large")


def _flag(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(400, f"header {name}: expected true or false, got {raw!r}")


def _usage_tokens(payload: bytes) -> int:
    """``usage.total_tokens`` of a response body or stream chunk, 0 without one.

    Engines write ``usage`` after the choices: the number is read after the last
    ``"usage"`` key rather than by decoding the whole (possibly long) body; a body
    that does not fit that shape is decoded."""
    at = payload.rfind(b'"usage"')
    if at >= 0:
        match = _USAGE_TOTAL.match(payload, at)
        if match is not None:
            return int(match.group(1))
    try:
        usage = json.loads(payload).get("usage") or {}
        return int(usage.get("total_tokens", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


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
