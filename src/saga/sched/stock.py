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

from typing import TYPE_CHECKING

from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import Policy
from saga.sched.wrapped import WrappedPolicy

if TYPE_CHECKING:
    from saga.engine.kvcache import EvictionOrder
    from saga.sched.view import CallView, ReplicaView


class StockEngine(WrappedPolicy):
    """``inner``'s gateway decisions over vLLM's stock engine rules (see the module doc)."""

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.inner.retention(replica, request, now)  # the hint stock vLLM ignores
        return RELEASE

    # ---- the engine's decisions: vLLM's defaults (Policy's), not the wrapped policy's -----
    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return Policy.queue_key(self, replica, request, now)

    def preempt_for(
        self, replica: ReplicaView, waiting: CallView, running: CallView, now: float
    ) -> bool:
        return Policy.preempt_for(self, replica, waiting, running, now)

    def prefill_limit(self, replica: ReplicaView, now: float) -> int | None:
        return Policy.prefill_limit(self, replica, now)

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return Policy.eviction_order(self, replica_index)

    def unpin_order(self, replica: ReplicaView, now: float) -> list[str]:
        return Policy.unpin_order(self, replica, now)


def on_stock_vllm(inner: Policy) -> Policy:
    """``inner`` deployed in front of stock vLLM, named as ``inner`` (a class per wrapped
    policy, because the simulator reads ``name`` from the class)."""
    cls = type(f"Stock_{type(inner).__name__}", (StockEngine,),
               {"name": inner.name, "offline": inner.offline})
    policy: Policy = cls(inner)
    return policy
