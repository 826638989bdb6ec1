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

from saga.sched.baselines.saga_belady import SagaWithNextUse
from saga.sched.decisions import Retention
from saga.sched.view import CallView, ReplicaView


class SagaMinEviction(SagaWithNextUse):
    """``saga`` whose GPU evicts the leaf next used furthest in the future (offline);
    a variant's config gives the bound of ``saga:FIELD=...``."""

    name = "saga-min-eviction"

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.next_use.call_done(request, now)
        return super().retention(replica, request, now)  # SAGA's own decision, unchanged
