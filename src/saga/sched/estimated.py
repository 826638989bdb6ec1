"""A policy that sees prompt lengths as a text gateway estimates them, not as the engine counts.

The gateway never tokenizes: it estimates a prompt's tokens from its text
(:func:`saga.wire.prefix.estimate_tokens`, characters / 4) and every :class:`CallInfo` it
gives the policy carries that estimate. On the real benchmark's agent text the tiny model's
tokenizer makes about 2.5 characters a token, so the gateway sees contexts about 1.6x
smaller than the engine holds, and a gate that counts working sets in tokens (SAGA's memory
gate) admits accordingly more workflows. A simulator that hands the policy the exact token
counts predicts a different deployment. :func:`with_prompt_estimates` wraps a policy so that
its gateway-side hooks (``on_call_ready``, ``place``, ``on_call_finished``) get each call's
estimate; the engine-side hooks (queue order, retention, eviction, read through the
engine's own view of a request) keep the engine's counts, as a scheduler inside the engine
has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from saga.sched.decisions import Admission, Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo

if TYPE_CHECKING:
    from saga.engine.kvcache import EvictionOrder
    from saga.sched.saga.graph import GraphStore
    from saga.sched.view import CallView, ReplicaView

#: (workflow id, call id) -> the prompt tokens the gateway estimates for that call
Estimates = Mapping[tuple[str, str], int]


class PromptEstimates(Policy):
    """``inner`` with the gateway's prompt estimates in its gateway-side hooks."""

    def __init__(self, inner: Policy, estimates: Estimates) -> None:
        super().__init__(inner.router)
        self.inner = inner
        self.estimates = estimates

    def _seen(self, call: CallInfo) -> CallInfo:
        """``call`` as the gateway saw it (unchanged if no estimate is known for it)."""
        estimate = self.estimates.get((call.workflow, call.call_id))
        if estimate is None or estimate == call.prompt_tokens:
            return call
        return dataclasses.replace(call, prompt_tokens=estimate)

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.inner.bind(ctx)

    # ---- the gateway's hooks: the estimate -------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.inner.on_call_ready(self._seen(call), now)

    def place(self, call: CallInfo, now: float) -> int:
        return self.inner.place(self._seen(call), now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.inner.on_call_finished(self._seen(call), replica, now)

    # ---- everything else: the wrapped policy's, unchanged -----------------------------------
    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        return self.inner.admit(workflow, now)

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return self.inner.queue_key(replica, request, now)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        return self.inner.retention(replica, request, now)

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

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.inner.on_workflow_finished(workflow, now)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        self.inner.on_admission_withdrawn(workflow, now)


def with_prompt_estimates(inner: Policy, estimates: Estimates) -> Policy:
    """``inner`` seeing the gateway's ``estimates``, named as ``inner`` (a class per
    wrapped policy: the engine reads ``static_order`` and the simulator ``name`` from
    the class)."""
    cls = type(f"Estimated_{type(inner).__name__}", (PromptEstimates,),
               {"name": inner.name, "static_order": inner.static_order,
                "offline": inner.offline})
    policy: Policy = cls(inner, estimates)
    return policy
