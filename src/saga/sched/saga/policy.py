"""The ``saga`` policy: docs/saga.md wired into the scheduler-core interface.

It keeps a small record per workflow (its call site in the Agent Execution Graph,
its home replica, when its last call finished) and answers the engine's questions
with the mechanisms of this package:

* :meth:`SagaPolicy.place` - :mod:`~saga.sched.saga.placement`;
* :meth:`SagaPolicy.queue_key` - :mod:`~saga.sched.saga.fairshare`;
* :meth:`SagaPolicy.retention` and :meth:`SagaPolicy.eviction_order` -
  :mod:`~saga.sched.saga.retention` and the graph's predicted next use;
* :meth:`SagaPolicy.admit` - :mod:`~saga.sched.saga.admission`.

Observations feed :mod:`~saga.sched.saga.graph`; the oracle fields of
:class:`~saga.sched.policy.CallInfo` (``ORACLE_FIELDS``) are never read: a workflow's end
is what its client marks, the runtime reports, or :mod:`~saga.sched.saga.ends` predicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saga.engine.kvcache import EvictionOrder, KeyedEviction, KVNode, LRUEviction
from saga.sched.decisions import ADMIT, RELEASE, Admission, Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, Router, WorkflowInfo
from saga.sched.saga import admission, placement, slot_fit, slot_gate, warm_first
from saga.sched.saga import retention as keep
from saga.sched.saga.chunking import GuardRule, step_prefill_limit
from saga.sched.saga.config import GITTINS_ORDERS, SagaConfig
from saga.sched.saga.ends import EndMarkers, EndWatch, end_wait, gate_min_ends, pause_wait
from saga.sched.saga.fairshare import FairShare
from saga.sched.saga.gate import (
    AgentKey,
    GrowthTally,
    SharedPrefixes,
    agent_key,
    counted_growth,
    memory_gate,
    saturated,
)
from saga.sched.saga.gittins import SessionLengths
from saga.sched.saga.graph import AgentGraph, Gap, GraphStore, node_key
from saga.sched.saga.steal_noise import PredictionNoise

if TYPE_CHECKING:
    from saga.sched.view import CallView, ReplicaView


@dataclass(slots=True)
class Flow:
    """What SAGA remembers of one workflow in progress."""

    info: WorkflowInfo
    node: str = ""
    home: int | None = None
    in_tool: bool = False
    last_finish: float | None = None
    last_prompt: int = 0
    last_output: int = 0  # output tokens of the previous call
    output: int = 0  # output tokens of the call that just finished
    gap_before: float = 0.0  # the tool time before the current call
    rest: float = 0.0  # expected seconds of work after the current call
    priority: float = 0.0  # expected seconds of work left, including the current call
    call_prefill: float = 0.0  # predicted prefill seconds of the current call
    context: int = 0  # tokens of KV it has built (prompt + output of its last call)
    next_use: float = 0.0  # predicted time of the next call (in a tool)
    #: what the graph predicts of its current tool gap, and since when it is in the tool
    #: (eviction_by_elapsed_tool_time)
    tool_gap: Gap | None = None
    tool_since: float = 0.0
    p_return: float = 0.0
    ideal: float = 0.0  # predicted seconds of its calls alone plus its tool gaps, so far
    attained: float = 0.0  # predicted GPU seconds of its finished calls (what AFS charged)
    prefixes: set[str] = field(default_factory=set)
    epoch: int = 0  # calls issued so far: a predicted end is for one epoch only
    predicted_end: bool = False  # taken as ended (ends.py): unpinned, evicted first
    uncounted: bool = False  # its working set has left the gate's count (implied by the above)
    marked: bool = False  # its client sent the end marker
    #: when its current call was placed, and the completion predicted there less its
    #: decode, with that decode per expected output token (steal_noise.py: re-priced
    #: with the output the call produced once it ends)
    placed_at: float | None = None
    predicted_fixed: float = 0.0
    predicted_per_token: float = 0.0


#: Tokens of the prefill chunk that rebuild weights are measured on (a typical chunk).
_REBUILD_CHUNK = 2048


class _NoRouter(Router):
    """SAGA places calls itself (placement needs the workflow state)."""

    name = "saga"

    def place(self, call: CallInfo, now: float) -> int:
        raise RuntimeError("SagaPolicy.place places calls itself; its router is never asked")


class SagaPolicy(Policy):
    """Workflow-atomic scheduling (docs/saga.md); ablations by :class:`SagaConfig`."""

    name = "saga"
    # AFS keys age and follow tenants' service: the engine must sort every step
    static_order = False

    def __init__(self, config: SagaConfig | None = None) -> None:
        super().__init__(_NoRouter())
        self.config = config or SagaConfig()
        self.guard = GuardRule.of(self.config)  # read every engine step
        self.graphs = GraphStore(self.config)
        self.fair = FairShare(self.config)
        self.flows: dict[str, Flow] = {}
        # Slowdown observed by interactive calls only: best-effort work is what admission
        # defers and what AFS serves last, so its (large) slowdowns say nothing about
        # what a new interactive workflow would see.
        self.slowdowns = admission.SlowdownTracker(self.config.slowdown_halflife)
        self.prefix_users: dict[str, int] = {}
        self.active_slos: dict[float, int] = {}  # SLOs of the workflows in flight
        self.steals = 0
        self.noise = PredictionNoise(self.config.steal_noise_window)  # steal_curse
        self._rebuild_weights: dict[int, float] = {}  # leaf depth in blocks -> weight
        self.end_watch = EndWatch()  # predicted ends: pins and eviction
        self.gate_watch = EndWatch()  # predicted ends the gate acts on (sooner: priors)
        self.end_markers = EndMarkers()
        self.session_lengths = SessionLengths(self.config.gittins_window)  # queue_order gittins
        self.predicted_ends = 0  # workflows taken as ended before any runtime said so

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.predictor = placement.Predictor(ctx.cost, ctx.block_tokens,
                                              self.config.backlog_price)
        self.homed = [0.0] * len(ctx.replicas)  # context tokens of the flows homed there
        self.homed_flows = [0] * len(ctx.replicas)  # the flows homed there (slot_fit)
        self.homed_total = 0.0
        self.growth = GrowthTally()  # the counted flows' expected growth (gate_growth)
        self._placements = 0
        self._lightest: list[int] = []
        self.unhomed: dict[AgentKey, int] = {}  # flows with no home yet, per (tenant, agent)
        self.gate = memory_gate(ctx, self.config)
        self.shared = SharedPrefixes(ctx.block_tokens)  # counted once in the working set

    # ---- workflow state ------------------------------------------------------------------
    def _flow(self, workflow: WorkflowInfo) -> Flow:
        flow = self.flows.get(workflow.workflow)
        if flow is None:
            flow = self.flows[workflow.workflow] = Flow(workflow)
            self._count_unhomed(agent_key(workflow), +1)
            if workflow.slo is not None:
                self.active_slos[workflow.slo] = self.active_slos.get(workflow.slo, 0) + 1
            self.fair.activate(workflow.tenant)
        return flow

    def _graph(self, flow: Flow) -> AgentGraph:
        return self.graphs.get(flow.info.agent, flow.info.tenant)

    def _rehome(self, flow: Flow, home: int | None, context: int) -> None:
        """Move ``flow``'s working set to ``home`` with ``context`` tokens."""
        if flow.home is not None:
            self.homed[flow.home] -= flow.context
            self.homed_flows[flow.home] -= 1
            self.homed_total -= flow.context
        else:
            self._count_unhomed(agent_key(flow.info), -1)
        flow.home, flow.context = home, context
        if home is not None:
            self.homed[home] += context
            self.homed_flows[home] += 1
            self.homed_total += context
        else:
            self._count_unhomed(agent_key(flow.info), +1)

    def _count_unhomed(self, key: AgentKey, delta: int) -> None:
        self.unhomed[key] = self.unhomed.get(key, 0) + delta

    def graph_snapshot(self) -> dict[str, object]:
        """The learned Agent Execution Graphs, as plain data (see `saga graph show`)."""
        return self.graphs.snapshot()

    def learned_graphs(self) -> GraphStore | None:
        # the no-graph ablation learns nothing, so it has nothing to share
        return self.graphs if self.graphs.learning else None

    # ---- admission -----------------------------------------------------------------------
    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        self._expire_ends(now)
        if self.config.memory_gate and workflow.slo is None:
            # Best effort behind others in the gate's queue waits whatever admission would
            # say: answer at once (under overload thousands of deferred workflows ask).
            behind = self.gate.behind(workflow.workflow, now)
            if behind:
                return behind
        if self.config.admission:
            active = [slo for slo, n in self.active_slos.items() if n > 0]
            if workflow.slo is not None and self.config.afs:
                predicted = self._queue_slowdown(interactive=True)
            elif active or workflow.slo is not None:
                predicted = max(self.slowdowns.value(now), self._queue_slowdown(interactive=True))
            else:
                predicted = 1.0  # no SLO in play: admission admits without a prediction
            verdict = admission.decide(workflow, now, predicted, active, self.config)
            if verdict.verdict == "reject":
                self.gate.forget(workflow.workflow)
            if verdict.verdict != "admit":
                return verdict
        if self.config.memory_gate:
            verdict = self.gate.decide(
                workflow, self._working_set(), self.unhomed.get(agent_key(workflow), 0),
                self.config.gate_work_conserving and self._room_for(agent_key(workflow)),
                any(n > 0 for n in self.active_slos.values()),
                saturated(self.ctx.replicas, self.config.gate_saturation_waiting), now,
                self.config.gate_slots and self._every_slot_homed(),
            )
            if verdict.verdict != "admit":
                return verdict
        self._flow(workflow)
        return ADMIT

    def set_tenant_weights(self, weights: Mapping[str, float]) -> None:
        self.config = self.config.model_copy(
            update={"tenant_weights": {**self.config.tenant_weights, **weights}}
        )
        self.fair.config = self.config
        for tenant, account in self.fair.tenants.items():
            account.weight = self.config.weight(tenant)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        # Else a withdrawn workflow at the head of the gate's queue blocks it for good.
        self.gate.forget(workflow.workflow)

    def _working_set(self) -> float:
        """Context tokens the admitted workflows hold or are expected to bring."""
        expected = self.gate.expected_context
        unplaced = sum(n * expected(a) for a, n in self.unhomed.items() if n)
        once = self.shared.overcount if self.config.gate_shared_once else 0
        return self.homed_total - once + unplaced + self.growth.total

    def _every_slot_homed(self) -> bool:
        """Whether the workflows in flight (admitted, not ended nor judged ended by the
        gate) leave no slot free on the replicas (:mod:`.slot_gate`)."""
        return slot_gate.every_slot_homed(
            self.ctx.replicas, (f.home for f in self.flows.values() if not f.uncounted))

    def _room_for(self, key: AgentKey) -> bool:
        """Whether some replica has no call waiting and free KV for a new workflow of
        ``key``'s agent type (its expected first context): memory does not bind there now."""
        need = self.gate.expected_context(key) / self.ctx.block_tokens
        for r in self.ctx.replicas:
            if not r.up or r.waiting:
                continue
            kv = r.kv
            free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks
            if free - r.demand_tokens / self.ctx.block_tokens >= need:
                return True
        return False

    def _queue_slowdown(self, interactive: bool) -> float:
        """Slowdown a new call would see from queueing alone on the best replica.

        Under AFS an interactive call waits only behind interactive work (a flooding
        best-effort tenant is over its share and served after), so only that is counted.
        """
        only_slo = interactive and self.config.afs
        backlog = min(
            (self.predictor.backlog(r, only_slo) for r in self._candidates(None)), default=0.0
        )
        typical = 1.0 + self.config.prior_tool_median  # a call plus a tool gap, seconds
        return 1.0 + backlog / typical

    # ---- observations ----------------------------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        flow = self.flows.get(call.workflow)
        if flow is None:  # its first call (or one not admitted through admit)
            flow = self._flow(
                WorkflowInfo(call.workflow, call.tenant, call.agent, call.workflow_arrival,
                             call.slo)
            )
        self._expire_ends(now)
        flow.epoch += 1
        if flow.uncounted:  # it came back after all: count it again
            self._unrelease(flow)
        graph = self._graph(flow)
        node = node_key(call.tool, call.index, self.config.depth_buckets)
        if flow.last_finish is None and flow.home is None:
            self.gate.observe_first_context(agent_key(call), call.prompt_tokens)
        if flow.last_finish is not None:
            flow.gap_before = now - flow.last_finish
            if self.graphs.learning:
                graph.observe_transition(
                    flow.node, node, flow.gap_before, call.prompt_tokens - flow.last_prompt
                )
        flow.in_tool = False
        flow.node = node
        calls_left, _ = graph.remaining(node)
        flow.rest = calls_left * self._call_seconds(graph, node)
        self.growth.count(flow.info.workflow,
                          counted_growth(graph, node, self.config.gate_growth))
        for ns, _, _ in call.runs:
            if ns.startswith("s:") and ns not in flow.prefixes:
                flow.prefixes.add(ns)
                self.prefix_users[ns] = self.prefix_users.get(ns, 0) + 1

    def _call_seconds(self, graph: AgentGraph, node: str) -> float:
        """Expected work of one call after ``node``: appended prefill plus decode."""
        p = self.predictor
        return graph.growth_tokens(node) * p.t_token + graph.output_tokens(node) * p.t_decode

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        flow = self.flows.get(call.workflow)
        if flow is None:
            return
        work = flow.call_prefill + flow.output * self.predictor.t_decode
        self.fair.charge(call.tenant, work)
        flow.attained += max(work, 0.0)
        self._observe_slowdown(flow, call, now)
        if flow.placed_at is not None:  # the spread of placement's predictions
            predicted = flow.predicted_fixed + flow.predicted_per_token * flow.output
            self.noise.observe(now - flow.placed_at, predicted)
            flow.placed_at = None
        flow.last_finish = now
        flow.last_prompt = call.prompt_tokens
        flow.last_output = flow.output
        self._rehome(flow, replica, call.prompt_tokens + flow.output)
        flow.in_tool = not call.ends_workflow
        flow.marked = call.ends_workflow
        if flow.in_tool:
            self._expire_ends(now)
            wait = self._time_to_end(flow, call)
            gate_wait = min(wait, self._time_to_end(flow, call, self._gate_min_ends(flow)),
                            pause_wait(self._graph(flow), flow.node, call.turn_ended,
                                       self.config))
            if wait <= 0.0:
                self._release(flow, now)
            else:
                self.end_watch.watch(now + wait, call.workflow, flow.epoch)
                if gate_wait <= 0.0:
                    self._uncount(flow)
                elif gate_wait < wait:
                    self.gate_watch.watch(now + gate_wait, call.workflow, flow.epoch)

    # ---- predicted ends (ends.py) ---------------------------------------------------------
    def _time_to_end(self, flow: Flow, call: CallInfo, min_ends: int | None = None) -> float:
        """Seconds after ``call`` finishes until its workflow is taken as ended, once
        ``min_ends`` ends of its agent were seen (default ``min_samples``)."""
        said = self.end_markers.said(agent_key(call))
        return end_wait(self._graph(flow), flow.node, call.turn_ended, self.config, said,
                        min_ends)

    def _gate_min_ends(self, flow: Flow) -> int:
        """Seen ends the gate needs before acting on a predicted end of ``flow``."""
        return gate_min_ends(self._graph(flow), self.config)

    def _expire_ends(self, now: float) -> None:
        for workflow, epoch in self.end_watch.due(now):
            flow = self.flows.get(workflow)
            if flow is not None and flow.epoch == epoch and flow.in_tool:
                self._release(flow, now)
        for workflow, epoch in self.gate_watch.due(now):
            flow = self.flows.get(workflow)
            if flow is not None and flow.epoch == epoch and flow.in_tool:
                self._uncount(flow)

    def _release(self, flow: Flow, now: float) -> None:
        """Take ``flow`` as ended: its working set leaves the gate's count, its pin goes."""
        if flow.predicted_end:
            return
        flow.predicted_end = True
        self.predicted_ends += 1
        home = flow.home
        self._uncount(flow)
        if home is not None:
            self.ctx.replicas[home].unpin(flow.info.workflow, now)

    def _uncount(self, flow: Flow) -> None:
        """``flow``'s working set leaves the gate's count (and its home's homed work)."""
        if flow.uncounted:
            return
        flow.uncounted = True
        self.shared.drop(flow.info.workflow)
        self.growth.count(flow.info.workflow, 0.0)
        if flow.home is not None:
            self.homed[flow.home] -= flow.context
            self.homed_total -= flow.context
            flow.context = 0
        else:
            self._count_unhomed(agent_key(flow.info), -1)

    def _unrelease(self, flow: Flow) -> None:
        flow.predicted_end = False
        flow.uncounted = False
        if flow.home is None:
            self._count_unhomed(agent_key(flow.info), +1)

    def _observe_slowdown(self, flow: Flow, call: CallInfo, now: float) -> None:
        latency = now - call.issued_at
        cached = flow.last_prompt + flow.last_output if flow.last_finish is not None else 0
        ideal = self.predictor.prefill(call.prompt_tokens, cached)
        ideal += flow.output * self.predictor.t_decode
        gap = flow.gap_before
        flow.ideal += ideal + gap
        if flow.info.slo is not None:
            self.slowdowns.add((latency + gap) / max(ideal + gap, 1e-6), now)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        flow = self.flows.pop(workflow.workflow, None)
        if flow is None:
            return
        self.end_markers.observe(agent_key(flow.info), flow.marked)
        # the gateway sees it end here (marker or idle timeout): its length is learned, the
        # running sessions of its agent type censored at the work they received so far
        if self.config.queue_order in GITTINS_ORDERS:
            key = agent_key(flow.info)
            self.session_lengths.observe(key, flow.attained, (
                f.attained for f in self.flows.values() if agent_key(f.info) == key))
        if flow.uncounted:
            self._unrelease(flow)  # then forgotten as any finished workflow
        if self.graphs.learning and flow.node:
            self._graph(flow).observe_end(flow.node)
        self._rehome(flow, None, 0)
        self.growth.count(flow.info.workflow, 0.0)
        self.shared.drop(workflow.workflow)
        self._count_unhomed(agent_key(flow.info), -1)
        if flow.info.slo is not None:
            self.active_slos[flow.info.slo] -= 1
        tct = now - flow.info.arrival
        self.fair.deactivate(workflow.tenant, tct / flow.ideal if flow.ideal > 0 else None)
        for ns in flow.prefixes:
            self.prefix_users[ns] -= 1

    # ---- placement -------------------------------------------------------------------------
    def place(self, call: CallInfo, now: float) -> int:
        flow = self.flows.get(call.workflow)
        if flow is None:  # a runtime that skipped on_call_ready: observe now
            self.on_call_ready(call, now)
            flow = self.flows[call.workflow]
        graph = self._graph(flow)
        output = graph.output_tokens(flow.node)
        home = flow.home if flow.home is not None and self.ctx.replicas[flow.home].up else None
        candidates = self._candidates(home)
        if not candidates:  # every sampled replica is down: any that is up will do
            candidates = [r for r in self.ctx.replicas if r.up]
            if not candidates:  # what the runtimes catch (the gateway answers 503)
                raise RuntimeError("no replica is up")
        if home is None and self.config.slot_fit:
            candidates = slot_fit.fitting(candidates, self.homed_flows,
                                          self.config.slot_fit_slack)
        elif home is not None and self.config.steal_slots:
            candidates = slot_fit.steal_targets(candidates, home, self.homed_flows)
        estimate = placement.choose(self.predictor, candidates, home, call.runs,
                                    call.prompt_tokens, output, self.homed, self.config,
                                    self.noise.sigma)
        chosen = estimate.replica
        flow.placed_at = now
        flow.predicted_fixed = estimate.backlog + estimate.service - estimate.drain
        flow.predicted_per_token = estimate.drain / output if output > 0 else 0.0
        if home is not None and chosen != home:
            self.steals += 1
            # the KV left behind is of no more use to this workflow: let it go
            self.ctx.replicas[home].unpin(call.workflow, now)
        self._rehome(flow, chosen, call.prompt_tokens)
        self.shared.hold(call.workflow, call.runs)
        flow.call_prefill = estimate.service - output * self.predictor.t_decode
        flow.priority = self._queue_priority(flow, estimate.service)
        return chosen

    def _queue_priority(self, flow: Flow, service: float) -> float:
        """Seconds of work that order ``flow``'s call within its tenant (``queue_order``):
        the work expected after it, or the work its workflow has received so far, plus
        the call's own predicted service; or the Gittins-like rank of what it received
        (:mod:`.gittins`), where its agent type's learned session lengths say something."""
        order = self.config.queue_order
        if order == "attained":
            return flow.attained + service
        if order in GITTINS_ORDERS:
            key, lengths = agent_key(flow.info), self.session_lengths
            if lengths.seen(key) >= self.config.gittins_min_sessions and (
                    order == "gittins" or lengths.heavy_tailed(key)):
                found = lengths.rank(key, flow.attained)
                if found is not None:
                    return found
        return flow.rest + service

    def _candidates(self, home: int | None) -> list[ReplicaView]:
        """The up replicas a placement evaluates (all of them on small clusters)."""
        replicas = self.ctx.replicas
        limit = self.config.placement_candidates
        if len(replicas) <= limit:
            return [r for r in replicas if r.up]
        self._refresh_lightest(limit // 2)
        chosen = set(self._lightest)
        if home is not None:
            chosen.add(home)
        n, draw = len(replicas), self.ctx.rng.random
        for _ in range(limit - len(chosen)):  # a seeded sample (repeats merge: fewer is fine)
            chosen.add(int(draw() * n))
        return [replicas[i] for i in sorted(chosen) if replicas[i].up]

    def _refresh_lightest(self, keep: int) -> None:
        """Keep ``self._lightest``, the ``keep`` replicas with the least homed work, fresh.

        The lightest replicas change slowly: each placement rescans one slice of the
        replicas (a full sweep every 64 placements) and merges it with the current set,
        so a decision costs O(candidates), never O(replicas), and no decision pays for
        a whole sweep at once.
        """
        n = len(self.ctx.replicas)
        width = -(-n // 64)
        start = self._placements * width % n
        self._placements += 1
        pool = sorted(set(self._lightest).union(range(start, min(start + width, n))))
        # a stable sort by homed work after the sort by index: ordered by (work, index)
        # without building a tuple per replica
        pool.sort(key=self.homed.__getitem__)
        self._lightest = pool[:keep]

    # ---- queue order -------------------------------------------------------------------------
    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return self._keys(replica, now)(request)

    def gateway_queue_key(
        self, replica: ReplicaView, request: CallView, now: float
    ) -> tuple[float, ...]:
        """:meth:`queue_key` with, after the tenant's element, warm first
        (:mod:`.warm_first`, ``warm_first_wait``): at a gateway's queue in front of an
        engine that takes no priority, a call whose prefix the replica holds goes ahead of a
        cold one of the same tenant, during the cold one's first ``warm_first_wait`` seconds
        of waiting."""
        key = self.queue_key(replica, request, now)
        wait = self.config.warm_first_wait
        if wait is None or not self.config.afs or request.info is None:
            return key
        cold = warm_first.cold(replica, request, now - request.enqueued_at, wait)
        return (key[0], cold, *key[1:])

    def queue_keys(
        self, replica: ReplicaView, now: float
    ) -> Callable[[CallView], tuple[float, ...]]:
        # a subclass's own keys, or a key set on the instance: asked as they are
        if getattr(self.queue_key, "__func__", None) is not SagaPolicy.queue_key:
            return super().queue_keys(replica, now)
        return self._keys(replica, now)

    def _keys(self, replica: ReplicaView, now: float) -> Callable[[CallView], tuple[float, ...]]:
        """The queue key at ``now`` on ``replica``, as one function for a sort: the engine
        asks it of every queued call at every step (a fifth of saga's coding probe,
        docs/engine.md, "Eleventh pass"), so what is the same for every call (the config,
        the replica's free and evictable blocks) is read once, and the fair-share key and
        the fit-first check (:meth:`_blocked`) are inline, the same arithmetic. Valid for
        one sort: nothing changes while it runs."""
        config = self.config
        if not config.afs:
            return _arrival_key
        flows, fair = self.flows, self.fair
        tenants, aging = fair.tenants, fair.config.aging
        wait = config.fit_first_wait
        if wait is None:

            def fair_key(request: CallView) -> tuple[float, ...]:
                info = request.info
                if info is None:
                    return (request.enqueued_at, request.seq)
                flow = flows.get(request.workflow)
                priority = flow.priority if flow is not None else 0.0
                account = tenants.get(info.tenant)
                if account is None:
                    account = fair.account(info.tenant)
                return (account.service / account.weight,
                        priority - aging * (now - request.enqueued_at), request.enqueued_at,
                        request.seq)

            return fair_key

        kv, block_tokens = replica.kv, replica.block_tokens
        free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks
        match_blocks = kv.match_blocks

        def fit_first_key(request: CallView) -> tuple[float, ...]:
            info = request.info
            enqueued = request.enqueued_at
            if info is None:
                return (enqueued, request.seq)
            flow = flows.get(request.workflow)
            priority = flow.priority if flow is not None else 0.0
            account = tenants.get(info.tenant)
            if account is None:
                account = fair.account(info.tenant)
            waited = now - enqueued
            blocked = 0
            if waited < wait:
                blocks = -(-request.prompt_tokens // block_tokens)
                # a cached prefix only lowers the need: a prompt that fits whole fits,
                # without the walk of the prefix tree
                if blocks > free and blocks - match_blocks(request.runs) > free:
                    blocked = 1
            return (account.service / account.weight, blocked, priority - aging * waited,
                    enqueued, request.seq)

        return fit_first_key

    def _blocked(self, replica: ReplicaView, request: CallView, waited: float,
                 limit: float) -> int:
        """1 when ``request``'s prompt does not fit the replica's free and evictable KV
        now and it has waited less than ``limit`` seconds, else 0: the fit-first check as
        defined (``queue_key`` computes it inline, with a shortcut; a test holds them
        equal)."""
        if waited >= limit:
            return 0
        kv = replica.kv
        free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks
        need = -(-request.prompt_tokens // replica.block_tokens) - kv.match_blocks(request.runs)
        return 1 if need > free else 0

    def preempt_for(
        self, replica: ReplicaView, waiting: CallView, running: CallView, now: float
    ) -> bool:
        """Fair-share preemption: the running call's tenant is over-served, relative to
        the waiting call's, by more than ``preempt_gap`` (see :mod:`.fairshare`)."""
        gap = self.config.preempt_gap
        if not self.config.afs or gap is None or waiting.info is None or running.info is None:
            return False
        if running.preemptions >= self.config.max_fair_preemptions:
            return False
        if running.info.slo is not None:
            return False  # an interactive call is never preempted: its SLO is at stake
        ahead, behind = running.info.tenant, waiting.info.tenant
        if ahead == behind:
            return False
        return self.fair.account(ahead).normalized - self.fair.account(behind).normalized > gap

    def prefill_limit(self, replica: ReplicaView, now: float) -> int | None:
        """The decode guard (:mod:`.chunking`)."""
        return step_prefill_limit(replica, self.guard)

    # ---- retention and eviction --------------------------------------------------------------
    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        flow = self.flows.get(request.workflow)
        if flow is None or request.info is None:
            return RELEASE
        graph = self._graph(flow)
        flow.output = request.generated
        if self.graphs.learning:
            graph.observe_output(flow.node, request.generated)
        gap = graph.gap(flow.node)
        flow.p_return = gap.p_continue
        flow.next_use = now + gap.mean()
        flow.tool_gap, flow.tool_since = gap, now
        if not self.config.retention:
            return RELEASE
        return keep.decide(self._retention_input(replica, request, now), self.config)

    def _retention_input(
        self, replica: ReplicaView, request: CallView, now: float
    ) -> keep.RetentionInput:
        assert request.info is not None
        flow = self.flows[request.workflow]
        bt = replica.block_tokens
        shared = sum(r[2] for r in request.runs if r[0].startswith("s:"))
        blocks = max(0, request.locked_blocks - shared)
        reload = None
        host = replica.host
        if host is not None and blocks < host.capacity:
            reload = self.ctx.cost.host_transfer_time(blocks * replica.block_bytes)
        demand = replica.demand_tokens // bt
        memory = keep.MemoryState(
            capacity=replica.kv.capacity,
            held=replica.kv.locked_blocks + replica.kv.anonymous_blocks,
            waiting_demand=demand,
            waiting_calls=len(replica.waiting),
        )
        return keep.RetentionInput(
            now=now,
            # said by the client, or predicted at once (a response that ends the turn of
            # an agent whose users rarely come back)
            ends=request.info.ends_workflow or self._time_to_end(flow, request.info) <= 0.0,
            gap=self._graph(flow).gap(flow.node),
            blocks=blocks,
            recompute=self.predictor.prefill(request.total_tokens, shared * bt),
            reload=reload,
            memory=memory,
        )

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        if not self.config.retention:
            return LRUEviction()
        # -1, the key of an ended workflow's KV, is the least _eviction_key gives: the
        # engine's tree stops ranking at the earliest released leaf keyed so
        return KeyedEviction("saga-next-use", self._eviction_key, floor=-1.0)

    def _eviction_key(self, node: KVNode, now: float) -> float:
        """Expected reuse value of a cached leaf: smaller is evicted first.

        One over the time until the owner's predicted next call (an online approximation
        of Belady: furthest next use first), times P(the owner calls again) if
        ``eviction_by_return_chance``; blocks of finished workflows, or of workflows taken
        as ended, are worth nothing; shared prefixes are worth their live users.
        Weighted by what losing the leaf's last block costs: its recompute seconds,
        relative to a block at the start of a context (``eviction_by_rebuild_cost``).

        (One function with no calls of its own on the common paths: a keyed eviction asks
        it of every evictable leaf of the replica, the policy's largest cost per eviction.)
        """
        config = self.config
        t0 = config.eviction_t0
        ns = node.namespace
        if ns.startswith("w:"):
            flow = self.flows.get(ns[2:])
            if flow is None or flow.predicted_end:
                return -1.0
            weight = flow.p_return if config.eviction_by_return_chance else 1.0
            if not flow.in_tool:
                value = weight / t0 + 1.0  # its call is queued or running: soon
            elif config.eviction_by_elapsed_tool_time and flow.tool_gap is not None:
                # the tool time still expected after what it has run: a workflow past its
                # predicted return is not due, it is in the gap's long tail
                value = weight / (flow.tool_gap.residual_mean(now - flow.tool_since) + t0)
            else:
                until = flow.next_use - now
                # max(until, 0.0), without the call; the same sum (0.0 + t0 == -0.0 + t0)
                value = weight / ((until if until > 0.0 else 0.0) + t0)
        elif ns.startswith("s:"):
            value = (1 + self.prefix_users.get(ns, 0)) / t0
        else:
            return 0.0
        if value <= 0.0 or not config.eviction_by_rebuild_cost:
            return value
        return value * self._rebuild_weight(node)

    def _rebuild_weight(self, node: KVNode) -> float:
        """Recompute cost of a token at the leaf's depth over that of a context's first
        tokens (attention: deeper tokens cost more), per token of a prefill chunk."""
        blocks = 0
        walk: KVNode | None = node
        while walk is not None:
            blocks += walk.count
            walk = walk.parent
        weights = self._rebuild_weights
        weight = weights.get(blocks)
        if weight is None:
            weight = weights[blocks] = self._chunk_seconds(blocks) / self._chunk_seconds(0)
        return weight

    def _chunk_seconds(self, blocks: int) -> float:
        """Seconds to prefill a chunk after ``blocks`` cached blocks of context."""
        start = blocks * self.ctx.block_tokens
        return self.ctx.cost.prefill_time(start + _REBUILD_CHUNK, start)


class SagaNoGraph(SagaPolicy):
    """Ablation: cold-start priors only, no learned Agent Execution Graph."""

    name = "saga-no-graph"

    def __init__(self) -> None:
        super().__init__(SagaConfig(graph=False))


class SagaNoSteal(SagaPolicy):
    """Ablation: strict session affinity after the first call (no work stealing)."""

    name = "saga-no-steal"

    def __init__(self) -> None:
        super().__init__(SagaConfig(steal=False))


class SagaNoAFS(SagaPolicy):
    """Ablation: first come first served queues instead of Agent Fair Share."""

    name = "saga-no-afs"

    def __init__(self) -> None:
        super().__init__(SagaConfig(afs=False))


class SagaNoRetention(SagaPolicy):
    """Ablation: release KV to LRU at tool calls, as vLLM (no pin, offload or next-use)."""

    name = "saga-no-retention"

    def __init__(self) -> None:
        super().__init__(SagaConfig(retention=False))


class SagaNoGate(SagaPolicy):
    """Ablation: no memory gate (every admitted workflow starts at once)."""

    name = "saga-no-gate"

    def __init__(self) -> None:
        super().__init__(SagaConfig(memory_gate=False))


class SagaNoAdmission(SagaPolicy):
    """Ablation: no SLO admission (no deferral or rejection for SLOs; the gate stays)."""

    name = "saga-no-admission"

    def __init__(self) -> None:
        super().__init__(SagaConfig(admission=False))


class SagaNoPreempt(SagaPolicy):
    """Ablation: Agent Fair Share orders the queues but never preempts a running call."""

    name = "saga-no-preempt"

    def __init__(self) -> None:
        super().__init__(SagaConfig(preempt_gap=None))


class SagaNoEndPrediction(SagaPolicy):
    """Ablation: wait for the client's end marker or the idle timeout (no predicted ends)."""

    name = "saga-no-end-prediction"

    def __init__(self) -> None:
        super().__init__(SagaConfig(predict_end=False))


ALL: tuple[type[SagaPolicy], ...] = (
    SagaPolicy, SagaNoGraph, SagaNoSteal, SagaNoAFS, SagaNoRetention, SagaNoAdmission,
    SagaNoGate, SagaNoPreempt, SagaNoEndPrediction,
)


def _arrival_key(request: CallView) -> tuple[float, ...]:
    """The queue key without AFS: first come first served, as vLLM."""
    return (request.enqueued_at, request.seq)
