"""``NAME+gate``: any policy behind SAGA's memory gate, configured as SAGA's defaults.

The audit of docs/RESULTS.md found that much of SAGA's lead on real agent
sessions is its memory gate (admit new workflows only while the working set of
those in flight fits the KV memory). To compare scheduling rather than the gate,
every baseline can run behind the very same gate: :class:`GatedPolicy` wraps a
policy and answers ``admit`` with :class:`~saga.sched.saga.gate.MemoryGate`, with
the bookkeeping of :class:`~saga.sched.saga.policy.SagaPolicy` (the working set
is the context of each admitted workflow: its last prompt plus output once it
has called, the running mean first context of its agent type until then), so
that on the same arrivals and calls its admit/defer sequence is SAGA's. Every
other decision (routing, queue order, retention, eviction) is the wrapped
policy's; a deferral of the wrapped policy's own admission (flow control) holds
a workflow the gate has already let in, without asking the gate again.

Only what a gateway sees is read: arrivals, call readiness, the prompt length of
a call, its output length when it finishes, and where it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from saga.engine.kvcache import EvictionOrder
from saga.sched.decisions import Admission, Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.gate import AgentKey, MemoryGate, agent_key

if TYPE_CHECKING:
    from saga.sched.saga.graph import GraphStore
    from saga.sched.view import CallView, ReplicaView

SUFFIX = "+gate"


@dataclass(slots=True)
class _Held:
    """An admitted workflow's share of the working set (as SAGA's ``Flow`` counts it)."""

    agent: AgentKey  # (tenant, agent type)
    home: int | None = None
    context: int = 0  # tokens: the current call's prompt, then prompt + output
    output: int = 0
    called: bool = False  # a call of it has finished


class GatedPolicy(Policy):
    """``inner``'s decisions, with admission through SAGA's memory gate."""

    name = "gated"

    def __init__(self, inner: Policy, config: SagaConfig | None = None) -> None:
        super().__init__(inner.router)
        self.inner = inner
        self.config = config or SagaConfig()
        self.held: dict[str, _Held] = {}
        self.unhomed: dict[AgentKey, int] = {}  # admitted, no home yet, per (tenant, agent)
        self.homed_total = 0.0
        self._passed: set[str] = set()  # let in by the gate, held by the inner admission

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.inner.bind(ctx)
        capacity = sum(r.kv.capacity for r in ctx.replicas) * ctx.block_tokens
        c = self.config
        self.gate = MemoryGate(
            capacity, c.memory_budget, c.retry_after, c.prior_context_tokens, c.gate_cold_start
        )

    # ---- the gate --------------------------------------------------------------------
    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        wid = workflow.workflow
        if wid not in self._passed:
            if workflow.slo is None:
                behind = self.gate.behind(wid)
                if behind:
                    return behind
            unplaced = self.unhomed.get(agent_key(workflow), 0)
            verdict = self.gate.decide(workflow, self._working_set(), unplaced)
            if verdict.verdict != "admit":
                return verdict
            self._hold(wid, agent_key(workflow))
            self._passed.add(wid)
        inner = self.inner.admit(workflow, now)
        if inner.verdict != "defer":
            self._passed.discard(wid)
        if inner.verdict == "reject":
            self._release(wid)
        return inner

    def _working_set(self) -> float:
        expected = self.gate.expected_context
        return self.homed_total + sum(n * expected(a) for a, n in self.unhomed.items() if n)

    def _hold(self, workflow: str, agent: AgentKey) -> _Held:
        held = self.held.get(workflow)
        if held is None:
            held = self.held[workflow] = _Held(agent)
            self.unhomed[agent] = self.unhomed.get(agent, 0) + 1
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
        self._rehome(held, None, 0)
        self.unhomed[held.agent] -= 1

    # ---- observations (the gate's bookkeeping, then the inner policy's) ------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        held = self._hold(call.workflow, agent_key(call))
        if not held.called and held.home is None:
            self.gate.observe_first_context(agent_key(call), call.prompt_tokens)
        self.inner.on_call_ready(call, now)

    def place(self, call: CallInfo, now: float) -> int:
        if call.workflow not in self.held:  # a runtime that skipped on_call_ready
            self.on_call_ready(call, now)
        chosen = self.inner.place(call, now)
        self._rehome(self.held[call.workflow], chosen, call.prompt_tokens)
        return chosen

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        held = self.held.get(request.workflow)
        if held is not None and request.info is not None:
            held.output = request.generated
        return self.inner.retention(replica, request, now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        held = self.held.get(call.workflow)
        if held is not None:
            held.called = True
            self._rehome(held, replica, call.prompt_tokens + held.output)
        self.inner.on_call_finished(call, replica, now)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self._release(workflow.workflow)
        self.inner.on_workflow_finished(workflow, now)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        self.gate.forget(workflow.workflow)
        if workflow.workflow in self._passed:
            self._passed.discard(workflow.workflow)
            self._release(workflow.workflow)
        self.inner.on_admission_withdrawn(workflow, now)

    # ---- everything else is the inner policy's ----------------------------------------------
    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return self.inner.queue_key(replica, request, now)

    def preempt_for(
        self, replica: ReplicaView, waiting: CallView, running: CallView, now: float
    ) -> bool:
        return self.inner.preempt_for(replica, waiting, running, now)

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return self.inner.eviction_order(replica_index)

    def unpin_order(self, replica: ReplicaView, now: float) -> list[str]:
        return self.inner.unpin_order(replica, now)

    def set_tenant_weights(self, weights: Mapping[str, float]) -> None:
        self.inner.set_tenant_weights(weights)

    def learned_graphs(self) -> GraphStore | None:
        return self.inner.learned_graphs()


def gated(inner: Policy, name: str) -> Policy:
    """``inner`` behind SAGA's memory gate, registered as ``name``.

    A class per wrapped policy, because the engine reads ``static_order`` and the
    gateway ``offline`` from the class.
    """
    cls = type(
        f"Gated_{type(inner).__name__}",
        (GatedPolicy,),
        {"name": name, "static_order": inner.static_order, "offline": inner.offline},
    )
    policy: Policy = cls(inner)
    return policy
