"""``continuum``: pin a workflow's KV through its tool call for a learned TTL.

Source (docs/baselines.md section 4): Li et al., "Continuum: Efficient and Robust
Multi-Turn LLM Agent Scheduling with KV Cache Time-to-Live", arXiv 2511.02230
(v2+ utility), with details reconstructed from the third-party plugin
``michiLXY03/vllm-continuum-plugin`` (``src/continuum_vllm/policy.py``).

1. Program-level first come first served: the queue key is the workflow's
   arrival, so a returning turn of an old program goes before newer programs.
2. When a call finishes and its workflow goes on, pin its KV for ``τ*``
   seconds; the engine drops the pin when the workflow's next call is admitted,
   at expiry, or under memory pressure. The last call of a workflow releases.
3. ``τ* = argmax_τ  F(τ) * benefit - cost(τ)`` over τ in {0} and the observed
   tool durations, where F is the empirical CDF of tool durations, benefit =
   ``continuity * mean queueing delay (last 100 calls) + prefill time of the
   call's context`` (our cost model), and ``cost(τ) = memory_cost_scale * τ *
   pinned blocks / KV capacity``. The plugin's cost is plain τ; scaling it by the
   pinned share of memory makes benefit and cost both seconds of a whole GPU's
   memory (docs/baselines.md's choice). τ* = 0 means no pin.
4. Cold start: a fixed ``cold_start_ttl`` (2 s) until ``min_samples`` (100)
   tool durations have been observed.
5. Routing: session affinity by a consistent hash of the workflow id, as
   ``vllm-affinity``.

Tool durations are learned online (:class:`~saga.sched.baselines._shared.ToolTimes`):
the gap between a call's finish and its workflow's next ready call. The source
keys the CDF by the name of the tool being called, which the finished call's
output names; our call records carry only the tool before a call, so the CDF is
keyed by call site (agent, previous tool), falling back to the agent, then to
all tools, below ``min_samples``.

Memory pressure: Continuum unpins the *youngest program* first; our engine gives
up pins earliest expiry first (``ReplicaView._allocate``) and has no hook for a
policy's order, so this baseline runs with the engine's order (reported).
"""

from __future__ import annotations

from collections import deque

from pydantic import BaseModel, ConfigDict, Field

from saga.sched.baselines._shared import ToolTimes
from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import CallInfo, Policy, WorkflowInfo
from saga.sched.view import CallView, ReplicaView
from saga.sched.vllm import ConsistentHashRouter


class ContinuumConfig(BaseModel):
    """TTL choice knobs (plugin defaults, docs/baselines.md section 4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cold_start_ttl: float = Field(2.0, ge=0.0, description="TTL in seconds before enough samples.")
    min_samples: int = Field(
        100, ge=1, description="Tool durations needed before the CDF is used (per level)."
    )
    sample_window: int = Field(1000, ge=1, description="Most recent durations kept per key.")
    queue_delay_window: int = Field(
        100, ge=1, description="Calls in the sliding mean of queueing delay."
    )
    continuity: float = Field(
        1.0, ge=0.0, description="η: weight of the queueing delay a pin avoids."
    )
    memory_cost_scale: float = Field(
        1.0, ge=0.0, description="c: seconds of cost per second of the whole KV cache pinned."
    )


def best_ttl(durations: list[float], benefit: float, cost_per_second: float) -> float:
    """``argmax_τ F(τ) * benefit - cost_per_second * τ`` over τ in {0} ∪ durations.

    ``durations`` is sorted; F is its empirical CDF. Ties go to the shorter TTL.
    """
    best, best_utility = 0.0, 0.0
    n = len(durations)
    for i, tau in enumerate(durations):
        if i + 1 < n and durations[i + 1] == tau:
            continue  # F(τ) counts every sample equal to τ: use the last of a run
        utility = (i + 1) / n * benefit - cost_per_second * tau
        if utility > best_utility:
            best, best_utility = tau, utility
    return best


class Continuum(Policy):
    """Program-level FCFS, affinity routing, KV pinned through tool calls for τ*."""

    name = "continuum"

    def __init__(self, config: ContinuumConfig | None = None) -> None:
        super().__init__(ConsistentHashRouter())
        self.config = config or ContinuumConfig()
        self.tools = ToolTimes(self.config.sample_window, self.config.min_samples)
        self.queue_delays: deque[float] = deque(maxlen=self.config.queue_delay_window)

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        info = request.info
        arrival = info.workflow_arrival if info is not None else request.enqueued_at
        return (arrival, request.enqueued_at, request.seq)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.queue_delays.append(max(0.0, request.scheduled_at - request.enqueued_at))
        info = request.info
        if info is None or info.ends_workflow:
            return RELEASE
        ttl = self.ttl(replica, request, info)
        return Retention("pin", ttl=ttl) if ttl > 0 else RELEASE

    def ttl(self, replica: ReplicaView, request: CallView, info: CallInfo) -> float:
        samples = self.tools.samples_for(info)
        if samples is None:
            return self.config.cold_start_ttl
        return best_ttl(samples.sorted, self.benefit(replica, request), self.cost_rate(
            replica, request))

    def benefit(self, replica: ReplicaView, request: CallView) -> float:
        """Seconds a hit on return saves: queueing delay avoided plus the re-prefill."""
        delay = sum(self.queue_delays) / len(self.queue_delays) if self.queue_delays else 0.0
        context = request.prompt_tokens + request.generated
        prefill = self.ctx.cost.prefill_time(
            context, chunk=replica.max_num_batched_tokens
        )
        return self.config.continuity * delay + prefill

    def cost_rate(self, replica: ReplicaView, request: CallView) -> float:
        share = request.locked_blocks / max(replica.kv.capacity, 1)
        return self.config.memory_cost_scale * share

    # ---- observations ----------------------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.tools.call_ready(call, now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.tools.call_finished(call, now)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.tools.workflow_finished(workflow.workflow)

