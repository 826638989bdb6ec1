"""A policy that is another policy in every hook it does not override.

The wrappers that change one side of a policy (SAGA's memory gate in front of a baseline,
saga.sched.gated; a gateway policy over stock vLLM, saga.sched.stock; the gateway's prompt
estimates, saga.sched.estimated) subclass :class:`WrappedPolicy` and override only the hooks
they change, so a hook added to :class:`~saga.sched.policy.Policy` is forwarded in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from saga.sched.decisions import Admission, Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo

if TYPE_CHECKING:
    from saga.engine.kvcache import EvictionOrder
    from saga.sched.saga.graph import GraphStore
    from saga.sched.view import CallView, ReplicaView


class WrappedPolicy(Policy):
    """``inner``'s decisions and observations, hook for hook."""

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner.router)
        self.inner = inner

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.inner.bind(ctx)

    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        return self.inner.admit(workflow, now)

    def place(self, call: CallInfo, now: float) -> int:
        return self.inner.place(call, now)

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return self.inner.queue_key(replica, request, now)

    def gateway_queue_key(
        self, replica: ReplicaView, request: CallView, now: float
    ) -> tuple[float, ...]:
        return self.inner.gateway_queue_key(replica, request, now)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        return self.inner.retention(replica, request, now)

    def preempt_for(
        self, replica: ReplicaView, waiting: CallView, running: CallView, now: float
    ) -> bool:
        return self.inner.preempt_for(replica, waiting, running, now)

    def prefill_limit(self, replica: ReplicaView, now: float) -> int | None:
        return self.inner.prefill_limit(replica, now)

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return self.inner.eviction_order(replica_index)

    def unpin_order(self, replica: ReplicaView, now: float) -> list[str]:
        return self.inner.unpin_order(replica, now)

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


def variant(cls: type[WrappedPolicy], inner: Policy, name: str) -> Policy:
    """``inner`` wrapped in ``cls``, registered as ``name``: a class per wrapped policy,
    because the engine reads ``static_order`` and the gateway ``offline`` from the class."""
    named = type(
        f"{cls.__name__.removesuffix('Policy')}_{type(inner).__name__}",
        (cls,),
        {"name": name, "static_order": inner.static_order, "offline": inner.offline},
    )
    policy: Policy = named(inner)
    return policy
