"""A call's path through the gateway, from who sent it to what stays of its KV.

identity (:func:`~saga.gateway.identity.identify`: the workflow, agent and tool, and
whether it ends) → admission (the policy may defer the workflow: the call waits here, or
gets a 429 after ``max_defer``) → the wait for the workflow's previous retention step
(:mod:`.retain_step`) → placement (the policy, or the workflow's home replica from the
store) → the backend's queue (a concurrency slot, weighted fair across tenants: the view's
queue, :mod:`.view`; within a tenant in the policy's order when the engine takes no
priority) → relay (:mod:`.relay`; a backend that fails before any byte reached
the client is retried elsewhere, within ``retries`` and the retry budget) → finish (the
policy learns the call ended and decides retention, which the backend carries out in the
background).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from saga.gateway.backends import Backend, BackendError
from saga.gateway.identity import identify
from saga.gateway.metrics import CallPhases, Move, RetainTiming
from saga.gateway.relay import Retryable, forward
from saga.gateway.retain_step import RetainStep
from saga.gateway.server import HttpRequest, Response, ResponseStream
from saga.gateway.store import MemoryStore, Session
from saga.gateway.view import GatewayCall
from saga.gateway.workflow_state import WorkflowState
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, Policy, WorkflowInfo
from saga.wire.openai_api import BadRequest, ChatRequest, CompletionRequest
from saga.wire.prefix import estimate_tokens, text_runs

if TYPE_CHECKING:
    from saga.gateway.app import Gateway

#: Body fields a client may not pass on to a backend (vLLM reads ``priority``).
_STRIPPED = ("priority",)


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


class CallPipeline:
    """The calls of one gateway: its workflows, their admission, placement, queueing,
    relaying and finish. The policy, views, backends, store and metrics are the
    gateway's."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.workflows: dict[str, WorkflowState] = {}
        self.retry_budget = RetryBudget(gateway.config.retry_budget)
        kind = type(gateway.policy)
        self._custom_priority = kind.queue_key is not Policy.queue_key
        # the order of the gateway's queue in front of an engine that takes no priority
        self._custom_order = (self._custom_priority
                              or kind.gateway_queue_key is not Policy.gateway_queue_key)
        self._rng = random.Random(0)  # retry jitter
        self._seq = 0

    def end_idle(self, now: float, idle: float) -> None:
        """End the workflows with no call in flight and none for ``idle`` seconds."""
        for key, wf in list(self.workflows.items()):
            if wf.in_flight == 0 and now - wf.last_seen > idle:
                self.end_workflow(key, wf, now)

    async def serve(
        self, http: HttpRequest, path: str, tenant: str,
        body: ChatRequest | CompletionRequest, data: dict[str, Any], raw: bytes,
    ) -> Response | ResponseStream:
        """One call of ``tenant`` (its body read and validated) from identity to answer."""
        cfg = self._gw.config
        if cfg.served_models and body.model not in cfg.served_models:
            raise BadRequest(404, f"model {body.model!r} not found; served: "
                             f"{', '.join(cfg.served_models)}", code="model_not_found")
        arrived = self._gw.now()
        who = identify(http.headers, data)
        workflow_id = f"{tenant}/{who.workflow}"
        agent = self._gw.agent_names.resolve(tenant, who.agent)
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
        estimated = estimate_tokens(text)
        # in the engine's tokens, as learned from the answers so far (saga.wire.token_scale)
        scale = self._gw.token_scale if cfg.learn_token_scale else None
        prompt_tokens = scale.tokens(estimated) if scale is not None else estimated
        factor = scale.factor if scale is not None else 1.0
        runs = text_runs(text, cfg.block_tokens)

        wf = self.workflows.get(workflow_id)
        if wf is None:
            if len(self.workflows) >= cfg.max_workflows:
                self._gw.metrics.shed["workflows"] += 1
                raise BadRequest(429, f"gateway overloaded: {cfg.max_workflows} workflows "
                                 "active", "overloaded", "too_many_workflows",
                                 {"Retry-After": "1"})
            slo = cfg.tenants[tenant].slo if tenant in cfg.tenants else None
            wf = WorkflowState(WorkflowInfo(workflow_id, tenant, agent, arrived, slo))
            self.workflows[workflow_id] = wf
        wf.last_seen = arrived
        wf.in_flight += 1
        # header-safe (a ``user`` may hold any character); the client sees its scoped id
        wire_id = urllib.parse.quote(workflow_id, safe="/:@-_.~+=")
        extra_headers: dict[str, str] = {"x-saga-workflow": wire_id}
        step = RetainStep()  # this call's retention step, which the next call waits for
        step_handed = False
        # when each phase of the call ended (CallPhases): admitted, the retention wait,
        # queued, prepared, answered
        marks = [arrived] * 5

        def answered() -> None:
            marks[4] = self._gw.now()
            step.begin()
            wf.retaining = step

        try:
            session = await self._gw.stored_op("session", self._gw.store.session(workflow_id))
            if session is None:  # the store is down: serve on this gateway's own state
                session = Session(None, False)
            if not (wf.admitted or session.admitted):
                note = await self._admit(wf)
                if note:
                    extra_headers["x-saga-admission"] = note
                await self._gw.stored_op("admitted",
                                   self._gw.store.mark_admitted(workflow_id, cfg.session_ttl))
            wf.admitted = True
            marks[0] = self._gw.now()
            if wf.retaining is not None and not await wf.retaining.wait(cfg.retain_wait):
                self._gw.metrics.retain_wait_timeouts += 1
            now = marks[1] = self._gw.now()
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
            index = await self.place(info, session.home, now, wf)
            attempt = 0
            failed: set[int] = set()  # backends that failed this call: a retry goes elsewhere
            while True:
                request = GatewayCall(info, max_tokens, cfg.block_tokens, seq, now, factor)
                view = self._gw.views[index]
                backend = self._gw.backends[index]
                await self.acquire(index, request, tenant)
                sent_at = marks[2] = self._gw.now()
                prepared = False
                try:
                    view.kv.add(runs)
                    out_headers = {"Content-Type": "application/json",
                                   "x-saga-workflow": wire_id}
                    key = None
                    if backend.takes_priority and self._custom_priority:
                        key = self._gw.policy.queue_key(view, request, now)
                    sent = dict(data)  # the backend adapts its own copy
                    await backend.prepare(workflow_id, sent, out_headers, key, info)
                    prepared = True
                    marks[3] = self._gw.now()
                    # what was validated goes on: the client's bytes when nothing changed
                    # (JSON readers of the engines keep the last of repeated keys, as here)
                    unchanged = not edited and _same(sent, data)
                    payload = raw if unchanged else json.dumps(sent).encode()
                    extra_headers["x-saga-backend"] = str(index)
                    response, usage = await forward(
                        self._gw.metrics, http, backend, view, path, body, payload, out_headers,
                        extra_headers, answered,
                    )
                    break
                except Retryable as failure:
                    failed.add(index)
                    if attempt >= cfg.retries or not self.retry_budget.take():
                        raise failure.error from None
                except asyncio.CancelledError:
                    # the client left: the backend call is closed; tell the policy it ended
                    self._gw.metrics.client_disconnects += 1
                    self._gw.policy.on_call_finished(info, index, self._gw.now())
                    raise
                finally:
                    if prepared:
                        backend.finished(workflow_id)
                    self.release(index, request)
                attempt += 1
                self._gw.metrics.retries += 1
                await asyncio.sleep(cfg.retry_backoff * 2 ** (attempt - 1)
                                    * (0.5 + self._rng.random()))
                now = self._gw.now()
                index = await self.place(info, None, now, wf, retry=True, exclude=failed)
                extra_headers["x-saga-retries"] = str(attempt)
            step_handed = True  # the finish ends it (once the backend has carried it out)
            if scale is not None:  # what the engine counted of this prompt
                scale.observe(estimated, usage.prompt)
            self._gw.views[index].learn_speed(request, self._gw.now(), usage.prompt,
                                              usage.total - usage.prompt)
            self._finish(wf, info, request, index, arrived, sent_at, usage.total, step)
            self._gw.metrics.phases.append(CallPhases(
                round(arrived, 3), workflow_id, info.index, index,
                *(round(b - a, 4) for a, b in zip([arrived, *marks[:4]], marks, strict=True))))
            return response
        finally:
            if not step_handed:  # failed or abandoned: nothing to wait for
                step.end()
            wf.in_flight -= 1
            if ends and workflow_id in self.workflows and wf.in_flight == 0:
                self.end_workflow(workflow_id, wf, self._gw.now())

    def end_workflow(self, key: str, wf: WorkflowState, now: float) -> None:
        """A workflow is over (its last call, or idle): the policy and the backends
        forget it (llama.cpp: its slot and saved slot file go)."""
        del self.workflows[key]
        self._gw.policy.on_workflow_finished(wf.info, now)
        for backend in self._gw.backends:
            backend.forget(key)

    async def _admit(self, wf: WorkflowState) -> str:
        """Ask the policy until it admits; return a note if the workflow was deferred."""
        started = self._gw.now()
        deadline = started + self._gw.config.max_defer
        reason = ""
        while True:
            now = self._gw.now()
            t0 = time.perf_counter()
            decision = self._gw.policy.admit(wf.info, now)
            self._gw.metrics.decision_latency.observe(time.perf_counter() - t0)
            self._gw.metrics.admissions[decision.verdict] += 1
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
                self._gw.policy.on_admission_withdrawn(wf.info, now)
                raise BadRequest(
                    429, f"workflow deferred for longer than max_defer "
                    f"({self._gw.config.max_defer:g}s): {reason}", "workflow_deferred",
                    "workflow_deferred", {"Retry-After": str(max(1, round(wait)))},
                )
            self._gw.metrics.admission_waiting += 1
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:  # the client went away while deferred
                self._gw.policy.on_admission_withdrawn(wf.info, self._gw.now())
                raise
            finally:
                self._gw.metrics.admission_waiting -= 1

    async def place(
        self, info: CallInfo, home: int | None, now: float, wf: WorkflowState, retry: bool = False,
        exclude: set[int] | None = None,
    ) -> int:
        """The replica for a call. The policy observes every call (its graphs learn) and
        places it, stealing included, when this gateway placed the workflow's last call
        (so the policy's own state is current). With ``sticky_sessions``, a workflow
        whose home another gateway chose (in the shared store) stays there."""
        t0 = time.perf_counter()
        for view in self._gw.views:  # running calls' prefill the time since has covered
            view.age(now)
        # a retry excludes the backends that failed the call: the policy sees them down
        # for this decision (unless none other is up)
        hidden = [i for i in exclude or () if self._gw.views[i].up]
        if hidden and any(v.up for i, v in enumerate(self._gw.views) if i not in hidden):
            for i in hidden:
                self._gw.views[i].up = False
        else:
            hidden = []
        try:
            index = self._choose_replica(info, home, now, wf, retry)
        finally:
            for i in hidden:
                self._gw.views[i].up = True
            self._gw.metrics.decision_latency.observe(time.perf_counter() - t0)
        if home is not None and index != home and not retry:
            self._note_move(info, home, index, now)
        if index != home:
            await self._gw.stored_op("home", self._gw.store.set_home(info.workflow, index,
                                                           self._gw.config.session_ttl))
        return index

    def _note_move(self, info: CallInfo, home: int, index: int, now: float) -> None:
        """Keep what the views said when a workflow was moved off its home (Metrics.moves)."""
        views = self._gw.views
        speed = views[0].speed.factor if views and views[0].speed is not None else 1.0
        self._gw.metrics.moves.append(Move(
            round(now, 3), info.workflow, home, index,
            [v.backlog_tokens for v in views], [v.load() for v in views],
            [v.kv.match_blocks(info.runs, record=False) for v in views], round(speed, 3)))

    def _choose_replica(
        self, info: CallInfo, home: int | None, now: float, wf: WorkflowState, retry: bool
    ) -> int:
        """The scheduler core's part of :meth:`_place` (what decision latency measures)."""
        if not retry:
            self._gw.policy.on_call_ready(info, now)
        if self._gw.config.sticky_sessions and home is not None and home != wf.placed_here \
                and 0 <= home < len(self._gw.views) and self._gw.views[home].up:
            return home
        try:
            index = self._gw.policy.place(info, now)
        except RuntimeError as error:  # "no replica is up"
            raise BadRequest(503, f"no backend available: {error}", "service_unavailable",
                             "no_backend") from None
        wf.placed_here = index
        return index

    # ---- per-backend concurrency, fair across tenants (the view's queue) ------------------
    async def acquire(self, index: int, call: GatewayCall, tenant: str) -> None:
        view = self._gw.views[index]
        if view.try_start(call, self._gw.now()):
            return
        if len(view.waiting) >= self._gw.config.max_queue:
            self._gw.metrics.shed["queue"] += 1
            raise BadRequest(429, f"backend {self._gw.backends[index].label} has "
                             f"{len(view.waiting)} calls waiting", "overloaded",
                             "backend_queue_full", {"Retry-After": "1"})
        tenants = self._gw.config.tenants
        weight = tenants[tenant].weight if tenant in tenants else 1.0
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call.slot = slot
        view.enqueue(call, weight)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.release(index, call)  # got the slot as the client left
            else:
                view.withdraw(call)
            raise
        finally:
            call.slot = None

    def release(self, index: int, call: GatewayCall) -> None:
        view, now = self._gw.views[index], self._gw.now()
        order = None
        if self._custom_order and not self._gw.backends[index].takes_priority:
            # the engine takes no priority (llama.cpp): the policy's order applies here,
            # at the gateway's queue in front of it
            def order(waiting: GatewayCall) -> tuple[float, ...]:
                return self._gw.policy.gateway_queue_key(view, waiting, now)
        for started in view.finish(call, now, _still_waiting, order):
            assert started.slot is not None
            started.slot.set_result(None)

    def _finish(
        self, wf: WorkflowState, info: CallInfo, request: GatewayCall, index: int, arrived: float,
        sent_at: float, tokens: int, step: RetainStep,
    ) -> None:
        now = self._gw.now()
        latency = now - arrived
        backend_time = max(now - sent_at, 1e-9)
        m = self._gw.metrics
        m.tenant_latency[info.tenant].observe(latency)
        m.tenant_slowdown[info.tenant].observe(latency / backend_time)
        if info.slo is not None:  # the gateway's share of the SLO: its queueing inflation
            m.tenant_slo[(info.tenant, latency / backend_time <= info.slo)] += 1
        self._gw.policy.on_call_finished(info, index, now)
        request.served(tokens)  # the blocks the finished call left: retention's input
        t0 = time.perf_counter()
        view = self._gw.views[index]
        decision = self._gw.policy.retention(view, request, now)
        m.decision_latency.observe(time.perf_counter() - t0)
        view.note_retention(info.workflow, decision, now, request)
        m.retentions[decision.kind] += 1
        backend = self._gw.backends[index]
        if decision.kind != "release" and backend.retains:
            if backend.retains_in_order:
                # the retention task records the decision when it starts, which is before
                # the gateway reads the workflow's next call (asyncio runs ready tasks in
                # order), and the engine keeps the order: nothing for that call to wait for
                step.end()
            self._gw.lifecycle.spawn(self._retain(backend, info.workflow, decision, now, step))
        else:
            step.end()
        record = self._gw.store.record_call(info.tenant, info.agent, info.tool, tokens, latency)
        if isinstance(self._gw.store, MemoryStore):
            _run_now(record)  # never suspends: no task needed
        else:
            self._gw.lifecycle.spawn(self._gw.stored_op("record", record))

    async def _retain(
        self, backend: Backend, workflow: str, decision: Retention, now: float,
        step: RetainStep,
    ) -> None:
        began = self._gw.now()
        try:
            await backend.retain(workflow, decision, now)
        except BackendError:
            self._gw.metrics.retention_errors += 1
        finally:
            step.end()
            self._gw.metrics.retain_steps.append(RetainTiming(
                round(began, 3), workflow, decision.kind, round(self._gw.now() - began, 4)))


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

