"""A policy's gateway in front of *stock* vLLM: what ``saga bench real`` deploys for baselines.

In the real benchmark (saga.bench.real) every policy but ``saga`` is its gateway policy in
front of stock vLLM (``--scheduling-policy fcfs``, no SAGA scheduler inside): the gateway
admits, defers (llm-d's flow control) and routes as the policy says, but inside the engine
it is vLLM's own rules that run. :class:`StockEngine` wraps a policy so that the simulator
runs that deployment:

* gateway decisions (``admit``, ``place``, the observations a policy learns from) are the
  wrapped policy's;
* engine decisions are vLLM's defaults (:class:`~saga.sched.policy.Policy`'s): the waiting
  queue first come first served (vLLM's ``FCFSRequestQueue``, no LPM order as SGLang's own
  engine would have, no program order as Continuum's patched vLLM would have), a finished
  call's KV released to the LRU free queue, no preemption but for memory, LRU eviction;
* the wrapped policy's retention decision is still asked (the gateway computes it and sends
  it as a hint, which stock vLLM ignores; asking it keeps what the policy learns from it,
  e.g. Continuum's queueing delays) and then dropped: the engine releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from saga.sched.decisions import RELEASE, Admission, Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo

if TYPE_CHECKING:
    from saga.sched.saga.graph import GraphStore
    from saga.sched.view import CallView, ReplicaView


class StockEngine(Policy):
    """``inner``'s gateway decisions over vLLM's stock engine rules (see the module doc)."""

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner.router)
        self.inner = inner

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.inner.bind(ctx)

    # ---- the gateway's decisions and observations: the wrapped policy's -------------------
    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        return self.inner.admit(workflow, now)

    def place(self, call: CallInfo, now: float) -> int:
        return self.inner.place(call, now)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.inner.retention(replica, request, now)  # the hint stock vLLM ignores
        return RELEASE

    def set_tenant_weights(self, weights: Mapping[str, float]) -> None:
        self.inner.set_tenant_weights(weights)

    def learned_graphs(self) -> GraphStore | None:
        return self.inner.learned_graphs()

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.inner.on_call_ready(call, now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.inner.on_call_finished(call, replica, now)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.inner.on_workflow_finished(workflow, now)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        self.inner.on_admission_withdrawn(workflow, now)

    # queue_key, preempt_for, eviction_order, unpin_order: Policy's (vLLM's) defaults


def on_stock_vllm(inner: Policy) -> Policy:
    """``inner`` deployed in front of stock vLLM, named as ``inner`` (a class per wrapped
    policy, because the simulator reads ``name`` from the class)."""
    cls = type(f"Stock_{type(inner).__name__}", (StockEngine,),
               {"name": inner.name, "offline": inner.offline})
    policy: Policy = cls(inner)
    return policy
