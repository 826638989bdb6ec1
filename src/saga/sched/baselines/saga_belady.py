"""``saga-belady``: SAGA's scheduling with Bélády's MIN eviction (an offline bound).

``belady`` bounds the GPU prefix misses of a policy that routes and queues as
``vllm-affinity`` does. SAGA does not: its placement moves workflows (steals), its
memory gate holds workflows back and Agent Fair Share reorders the queues, so each
replica sees another stream of calls, at other times, and ``belady``'s count is no
bound on SAGA's (on the `belady` scenario SAGA can miss fewer tokens than it). This
bound keeps everything of ``saga`` (admission, gate, placement, queue order, ends)
and changes only what happens to KV after a call: it is released (never pinned,
offloaded or dropped) and evicted by MIN, with the next uses read from the trace
(:class:`~saga.sched.baselines.belady.NextUse`). SAGA's misses over this bound's
measure SAGA's retention and eviction alone. Timing still feeds back (a different
eviction changes prefill times and so the stream), as for ``belady``.
"""

from __future__ import annotations

from saga.engine.kvcache import EvictionOrder
from saga.sched.baselines.belady import NextUse
from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.view import CallView, ReplicaView


class SagaWithNextUse(SagaPolicy):
    """``saga`` fed the next uses of the trace and evicting by MIN: what the offline
    bounds that schedule as SAGA does share (``saga-belady``, ``saga-min-eviction``)."""

    offline = True

    def __init__(self, config: SagaConfig | None = None) -> None:
        super().__init__(config)
        self.next_use = NextUse()

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return self.next_use.eviction_order(self.name)

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        super().on_call_ready(call, now)
        self.next_use.call_ready(call)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        super().on_call_finished(call, replica, now)
        self.next_use.call_finished(call)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        super().on_workflow_finished(workflow, now)
        self.next_use.workflow_finished(workflow.workflow)


class SagaBelady(SagaWithNextUse):
    """``saga`` whose KV is released at every call and evicted by MIN (offline)."""

    name = "saga-belady"

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        super().retention(replica, request, now)  # what SAGA learns from the call
        self.next_use.call_done(request, now)
        return RELEASE
