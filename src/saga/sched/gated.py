"""``NAME+gate``: any policy behind SAGA's whole memory gate, configured as SAGA's defaults.

The audit of docs/RESULTS.md found that much of SAGA's lead on real agent
sessions is its memory gate (admit new workflows only while the working set of
those in flight fits the KV memory). To compare scheduling rather than the gate,
every baseline can run behind the very same gate: :class:`GatedPolicy` wraps a
policy and answers ``admit`` with the gate of :class:`~saga.sched.saga.policy.SagaPolicy`:

* the same :class:`~saga.sched.saga.gate.MemoryGate` (:func:`~saga.sched.saga.gate.memory_gate`:
  GPU KV plus ``gate_host_share`` of the host tier), interactive workflows queued
  ahead, and best effort leaving ``gate_interactive_reserve`` of the limit free
  while workflows with an SLO are in flight;
* the same working set: the context of each admitted workflow (its last prompt plus
  output once it has called, the running mean first context of its agent type until
  then), each shared prompt prefix counted once (``gate_shared_once``);
* the same predicted ends: the gate learns its own Agent Execution Graph
  (:class:`~saga.sched.saga.graph.GraphStore`) from what SAGA's learns from (its
  estimates are a function of the observations alone, so they are SAGA's whatever
  either reads), and a silent
  workflow leaves the count when :func:`~saga.sched.saga.ends.gate_wait` says, by SAGA's
  rule; a call that comes after all counts it again.

So on the same arrivals and calls its admit/defer sequence is that of SAGA's gate without
the pause in a tool (``saga`` with ``gate_pause_quantile`` None whenever SAGA's SLO admission
admits, as it does with no SLO in play).
Not given: SAGA's SLO admission (a baseline's service levels are its own, e.g.
``+priority``), the work-conserving gate (``gate_work_conserving``, off by default) and
the pause in a tool (``gate_pause_quantile``: without SAGA's retention a paused session comes
back to KV that is gone, and it made the gated baselines slower, docs/baselines.md).
Every other decision (routing, queue order, retention, eviction) is the wrapped
policy's: a predicted end only changes the gate's count, never a pin; a deferral of
the wrapped policy's own admission (flow control) holds a workflow the gate has
already let in, without asking the gate again.

Only what a gateway sees is read: arrivals, call readiness, the prompt length of
a call, its output length when it finishes, where it ran, its end marker, and
whether its response ended the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saga.sched.decisions import Admission, Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.ends import EndMarkers, EndWatch, gate_wait
from saga.sched.saga.gate import (
    AgentKey,
    GrowthTally,
    SharedPrefixes,
    agent_key,
    counted_growth,
    memory_gate,
    saturated,
)
from saga.sched.saga.graph import AgentGraph, GraphStore, node_key
from saga.sched.wrapped import WrappedPolicy, variant

if TYPE_CHECKING:
    from saga.sched.view import CallView, ReplicaView

SUFFIX = "+gate"


@dataclass(slots=True)
class _Held:
    """An admitted workflow's share of the working set (as SAGA's ``Flow`` counts it)."""

    agent: AgentKey  # (tenant, agent type)
    slo: float | None = None
    home: int | None = None
    context: int = 0  # tokens: the current call's prompt, then prompt + output
    output: int = 0
    called: bool = False  # a call of it has finished
    node: str = ""  # its call site in the gate's graph
    last_finish: float | None = None
    last_prompt: int = 0
    epoch: int = 0  # calls issued so far: a predicted end is for one epoch only
    in_tool: bool = False
    uncounted: bool = False  # taken as ended by the gate: out of the working set
    marked: bool = False  # its client sent the end marker


class GatedPolicy(WrappedPolicy):
    """``inner``'s decisions, with admission through SAGA's memory gate."""

    name = "gated"

    def __init__(self, inner: Policy, config: SagaConfig | None = None) -> None:
        super().__init__(inner)
        self.config = config or SagaConfig()
        self.held: dict[str, _Held] = {}
        self.unhomed: dict[AgentKey, int] = {}  # admitted, no home yet, per (tenant, agent)
        self.homed_total = 0.0
        self.growth = GrowthTally()  # the counted workflows' expected growth (gate_growth)
        self.interactive = 0  # held workflows with an SLO
        self._passed: set[str] = set()  # let in by the gate, held by the inner admission
        #: admissions the gate deferred: while it is 0 every admit was the inner policy's,
        #: so the run so far is the inner policy's run (the capacity search reuses it)
        self.gate_holds = 0
        # the gate's own graph: the inner policy's (if any) is the inner policy's
        self.graphs = GraphStore(self.config)
        self.end_markers = EndMarkers()
        self.gate_watch = EndWatch()

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.inner.bind(ctx)
        self.gate = memory_gate(ctx, self.config)
        self.shared = SharedPrefixes(ctx.block_tokens)

    # ---- the gate --------------------------------------------------------------------
    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        wid = workflow.workflow
        if wid not in self._passed:
            self._expire_ends(now)
            if workflow.slo is None:
                behind = self.gate.behind(wid, now)
                if behind:
                    self.gate_holds += 1
                    return behind
            unplaced = self.unhomed.get(agent_key(workflow), 0)
            verdict = self.gate.decide(
                workflow, self._working_set(), unplaced, interactive_active=self.interactive > 0,
                saturated=saturated(self.ctx.replicas, self.config.gate_saturation_waiting),
                now=now,
            )
            if verdict.verdict != "admit":
                self.gate_holds += 1
                return verdict
            self._hold(wid, agent_key(workflow), workflow.slo)
            self._passed.add(wid)
        inner = self.inner.admit(workflow, now)
        if inner.verdict != "defer":
            self._passed.discard(wid)
        if inner.verdict == "reject":
            self._release(wid)
        return inner

    def _working_set(self) -> float:
        expected = self.gate.expected_context
        unplaced = sum(n * expected(a) for a, n in self.unhomed.items() if n)
        once = self.shared.overcount if self.config.gate_shared_once else 0
        return self.homed_total - once + unplaced + self.growth.total

    def _hold(self, workflow: str, agent: AgentKey, slo: float | None) -> _Held:
        held = self.held.get(workflow)
        if held is None:
            held = self.held[workflow] = _Held(agent, slo)
            self.unhomed[agent] = self.unhomed.get(agent, 0) + 1
            self.interactive += slo is not None
        return held

    def _rehome(self, held: _Held, home: int | None, context: int) -> None:
        if held.home is not None:
            self.homed_total -= held.context
        else:
            self.unhomed[held.agent] -= 1
        held.home, held.context = home, context
        if home is not None:
            self.homed_total += context
        else:
            self.unhomed[held.agent] += 1

    def _release(self, workflow: str) -> None:
        held = self.held.pop(workflow, None)
        if held is None:
            return
        self._recount(held)
        self._rehome(held, None, 0)
        self.growth.count(workflow, 0.0)
        self.shared.drop(workflow)
        self.unhomed[held.agent] -= 1
        self.interactive -= held.slo is not None

    # ---- predicted ends (SAGA's rule: saga/ends.py) --------------------------------------
    def _graph(self, agent: AgentKey) -> AgentGraph:
        tenant, name = agent
        return self.graphs.get(name, tenant)

    def _expire_ends(self, now: float) -> None:
        for workflow, epoch in self.gate_watch.due(now):
            held = self.held.get(workflow)
            if held is not None and held.epoch == epoch and held.in_tool:
                self._uncount(workflow, held)

    def _uncount(self, workflow: str, held: _Held) -> None:
        """``held``'s working set leaves the gate's count (as SAGA's ``_uncount``)."""
        if held.uncounted:
            return
        held.uncounted = True
        self.shared.drop(workflow)
        self.growth.count(workflow, 0.0)
        if held.home is not None:
            self.homed_total -= held.context
            held.context = 0
        else:
            self.unhomed[held.agent] -= 1

    def _recount(self, held: _Held) -> None:
        """It called after all (or ended): back in the count, as before it was taken."""
        if held.uncounted:
            held.uncounted = False
            if held.home is None:
                self.unhomed[held.agent] += 1

    # ---- observations (the gate's bookkeeping, then the inner policy's) ------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        held = self._hold(call.workflow, agent_key(call), call.slo)
        self._expire_ends(now)
        held.epoch += 1
        self._recount(held)
        if not held.called and held.home is None:
            self.gate.observe_first_context(agent_key(call), call.prompt_tokens)
        graph = self._graph(held.agent)
        node = node_key(call.tool, call.index, self.config.depth_buckets)
        if held.last_finish is not None and self.graphs.learning:
            graph.observe_transition(held.node, node, now - held.last_finish,
                                     call.prompt_tokens - held.last_prompt)
        held.in_tool = False
        held.node = node
        self.growth.count(call.workflow, counted_growth(graph, node, self.config.gate_growth))
        self.inner.on_call_ready(call, now)

    def place(self, call: CallInfo, now: float) -> int:
        if call.workflow not in self.held:  # a runtime that skipped on_call_ready
            self.on_call_ready(call, now)
        chosen = self.inner.place(call, now)
        self._rehome(self.held[call.workflow], chosen, call.prompt_tokens)
        self.shared.hold(call.workflow, call.runs)
        return chosen

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        held = self.held.get(request.workflow)
        if held is not None and request.info is not None:
            held.output = request.generated
            if self.graphs.learning:
                self._graph(held.agent).observe_output(held.node, request.generated)
        return self.inner.retention(replica, request, now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        held = self.held.get(call.workflow)
        if held is not None:
            held.called = True
            held.last_finish = now
            held.last_prompt = call.prompt_tokens
            self._rehome(held, replica, call.prompt_tokens + held.output)
            held.in_tool = not call.ends_workflow
            held.marked = call.ends_workflow
            if held.in_tool:
                self._expire_ends(now)
                wait = gate_wait(self._graph(held.agent), held.node, call.turn_ended,
                                 self.config, self.end_markers.said(held.agent))
                if wait <= 0.0:
                    self._uncount(call.workflow, held)
                else:
                    self.gate_watch.watch(now + wait, call.workflow, held.epoch)
        self.inner.on_call_finished(call, replica, now)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        held = self.held.get(workflow.workflow)
        if held is not None:
            self.end_markers.observe(held.agent, held.marked)
            if self.graphs.learning and held.node:
                self._graph(held.agent).observe_end(held.node)
        self._release(workflow.workflow)
        self.inner.on_workflow_finished(workflow, now)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        self.gate.forget(workflow.workflow)
        if workflow.workflow in self._passed:
            self._passed.discard(workflow.workflow)
            self._release(workflow.workflow)
        self.inner.on_admission_withdrawn(workflow, now)

    # queue order, preemption, eviction, unpinning, tenant weights, graphs: the inner
    # policy's (WrappedPolicy)


def gated(inner: Policy, name: str) -> Policy:
    """``inner`` behind SAGA's memory gate, registered as ``name``."""
    return variant(GatedPolicy, inner, name)
