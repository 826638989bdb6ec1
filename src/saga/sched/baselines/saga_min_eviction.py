"""``saga-min-eviction``: ``saga`` with only its GPU eviction order replaced by MIN (offline).

``saga-belady`` bounds SAGA's retention and eviction together: it releases every call's
KV, where ``saga`` pins, offloads to the host tier or drops it. Its misses are then all
recomputes, SAGA's mostly host loads, and the ratio of the two mixes what retention
decides with what eviction decides. This bound keeps all of ``saga``, its retention
decisions included (the same pins, offloads with their prefetches, drops and predicted
ends), and changes one thing: which cached leaf the GPU evicts first, by Bélády's MIN
with the next uses read from the trace (:class:`~saga.sched.baselines.belady.NextUse`,
the same knowledge as ``belady`` and ``saga-belady``). SAGA's GPU prefix misses over
this bound's measure its eviction key alone. Timing still feeds back (another eviction
changes prefill times and so the stream), as for the other bounds: not a strict bound.
"""

from __future__ import annotations

from saga.engine.kvcache import EvictionOrder
from saga.sched.baselines.belady import NextUse
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.view import CallView, ReplicaView


class SagaMinEviction(SagaPolicy):
    """``saga`` whose GPU evicts the leaf next used furthest in the future (offline)."""

    name = "saga-min-eviction"
    offline = True

    def __init__(self, config: SagaConfig | None = None) -> None:
        super().__init__(config)  # a variant's config: the bound of ``saga:FIELD=...``
        self.next_use = NextUse()

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return self.next_use.eviction_order(self.name)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.next_use.call_done(request, now)
        return super().retention(replica, request, now)  # SAGA's own decision, unchanged

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        super().on_call_ready(call, now)
        self.next_use.call_ready(call)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        super().on_call_finished(call, replica, now)
        self.next_use.call_finished(call)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        super().on_workflow_finished(workflow, now)
        self.next_use.workflow_finished(workflow.workflow)
