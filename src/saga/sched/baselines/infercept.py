"""``infercept``: at each tool call, preserve, discard or swap by least memory-time waste.

Source (docs/baselines.md section 5): Abhyankar et al., "INFERCEPT: Efficient
Intercept Support for Augmented Large Language Model Inference", ICML 2024,
arXiv 2402.01869; code ``WukLab/InferCept``. The formulas are a reconstruction of
the paper's section 4 (its body was not readable), consistent with its lecture
notes and code constants.

With ``C_i`` the intercepted call's context tokens, ``C_other`` the context of the
other running calls, ``M`` KV bytes per token, ``T_INT`` the predicted tool time,
``T_fwd(n)`` the prefill time of ``n`` tokens and ``T_swap(n)`` the host-link time
of ``n`` tokens of KV, the GPU memory wasted (byte-seconds) by each option is

* discard (recompute on return): ``T_fwd(C_i) * (C_i + C_other) * M``: the
  recomputation holds the call's memory and stalls the batch;
* preserve (keep on the GPU): ``T_INT * C_i * M``: idle memory for the tool time;
* swap (to host and back): ``2 * T_swap(excess) * (C_i + C_other) * M``: the
  transfers stall the batch, except for the ``free swap budget`` the link moves
  while a step computes (swap pipelining); ``excess`` is the part of ``C_i``
  beyond what is left of that budget in the current step.

The option with the least waste wins (ties: preserve, then swap, then discard).
Preserve pins the KV for ``preserve_ttl_factor * T_INT`` (InferCept keeps it until
the call resumes; a TTL bounds a wrong prediction); swap offloads to the host
tier with a prefetch timed to land at the predicted return (the engine leaves
the GPU copy evictable rather than freeing it); discard drops the workflow's
private blocks. Swap needs a host tier; without one only preserve and discard
compete. The last call of a workflow releases its KV to the prefix cache.

Choices (docs/baselines.md): ``T_INT`` is the mean observed duration at the same
call site (learned online, see :class:`~saga.sched.baselines._shared.ToolTimes`;
cold start ``cold_start_tool_seconds``); ``T_fwd`` and ``T_swap`` come from our cost
model; the swap budget of a step is what the host link moves during one decode
step of the current batch, shared first come first served by the calls that
finish in that step (InferCept gives it to the most wasteful ones first). Not
modelled: chunked recomputation (the discard stall uses the full prefill), and
under pressure the engine gives up pins earliest expiry first, where InferCept
discards the longest remaining interception first. Queue order: the workflow's
original arrival (InferCept resumes an intercepted request with its original
arrival time). Routing: session affinity, as ``vllm-affinity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from saga.sched.baselines._shared import ToolTimes
from saga.sched.decisions import DROP, RELEASE, Retention
from saga.sched.policy import CallInfo, Policy, WorkflowInfo
from saga.sched.view import CallView, ReplicaView
from saga.sched.vllm import ConsistentHashRouter

InterceptOption = Literal["preserve", "swap", "discard"]


class InferCeptConfig(BaseModel):
    """Knobs of the waste-minimising interception policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cold_start_tool_seconds: float = Field(
        2.0, ge=0.0, description="Predicted tool time before a call site has samples."
    )
    min_samples: int = Field(
        10, ge=1, description="Durations needed before the observed mean replaces the prior."
    )
    sample_window: int = Field(1000, ge=1, description="Most recent durations kept per key.")
    preserve_ttl_factor: float = Field(
        2.0, gt=0.0, description="A preserved call's pin lasts this times the predicted tool time."
    )
    pipelined_swap: bool = Field(
        True, description="Count the swap tokens the link moves during a step as free."
    )


@dataclass(frozen=True, slots=True)
class Interception:
    """The numbers InferCept's choice is made from, for one intercepted call."""

    context_tokens: int
    other_tokens: int
    tool_seconds: float
    recompute_seconds: float
    swap_stall_seconds: float
    kv_bytes_per_token: float
    can_swap: bool = True


def memory_waste(case: Interception) -> dict[InterceptOption, float]:
    """Byte-seconds of GPU memory each option wastes (see the module docstring)."""
    m = case.kv_bytes_per_token
    batch = case.context_tokens + case.other_tokens
    wastes: dict[InterceptOption, float] = {
        "preserve": case.tool_seconds * case.context_tokens * m,
        "swap": 2.0 * case.swap_stall_seconds * batch * m,
        "discard": case.recompute_seconds * batch * m,
    }
    if not case.can_swap:
        del wastes["swap"]
    return wastes


def least_waste(case: Interception) -> InterceptOption:
    wastes = memory_waste(case)
    return min(wastes, key=lambda option: wastes[option])  # dict order breaks ties


class InferCept(Policy):
    """Least memory-time waste among preserve, swap and discard at every tool call."""

    name = "infercept"

    def __init__(self, config: InferCeptConfig | None = None) -> None:
        super().__init__(ConsistentHashRouter())
        self.config = config or InferCeptConfig()
        self.tools = ToolTimes(self.config.sample_window, self.config.min_samples)
        self._budget_used: dict[int, tuple[float, int]] = {}  # replica -> (step time, tokens)

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        info = request.info
        arrival = info.workflow_arrival if info is not None else request.enqueued_at
        return (arrival, request.enqueued_at, request.seq)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        info = request.info
        if info is None or info.ends_workflow:
            return RELEASE
        case = self.interception(replica, request, info, now)
        option = least_waste(case)
        if option == "preserve":
            return Retention("pin", ttl=self.config.preserve_ttl_factor * case.tool_seconds)
        if option == "swap":
            swap_in = self.ctx.cost.host_transfer_time(self._bytes(case.context_tokens))
            return Retention("offload", prefetch_at=now + max(0.0, case.tool_seconds - swap_in))
        return DROP

    def interception(
        self, replica: ReplicaView, request: CallView, info: CallInfo, now: float
    ) -> Interception:
        context = request.prompt_tokens + request.generated
        cost = self.ctx.cost
        excess = max(0, context - self._take_swap_budget(replica, context, now))
        return Interception(
            context_tokens=context,
            other_tokens=sum(r.computed for r in replica.running),
            tool_seconds=self.predicted_tool_seconds(info),
            recompute_seconds=cost.prefill_time(
                context, chunk=replica.max_num_batched_tokens
            ),
            swap_stall_seconds=cost.host_transfer_time(self._bytes(excess)),
            kv_bytes_per_token=float(cost.model.kv_bytes_per_token()),
            can_swap=replica.host is not None,
        )

    def predicted_tool_seconds(self, info: CallInfo) -> float:
        samples = self.tools.samples_for(info)
        return samples.mean() if samples is not None else self.config.cold_start_tool_seconds

    def _take_swap_budget(self, replica: ReplicaView, tokens: int, now: float) -> int:
        """Tokens of this swap that ride free on the current step's link time."""
        if not self.config.pipelined_swap or replica.host is None:
            return 0
        when, used = self._budget_used.get(replica.index, (now, 0))
        if when != now:
            used = 0
        free = max(0, self._step_swap_budget(replica) - used)
        taken = min(free, tokens)
        self._budget_used[replica.index] = (now, used + taken)
        return taken

    def _step_swap_budget(self, replica: ReplicaView) -> int:
        cost = self.ctx.cost
        n = max(1, len(replica.running))
        step = cost.decode_steps_time(n, sum(r.computed for r in replica.running), 1)
        return int(step * cost.host_link_bandwidth / cost.model.kv_bytes_per_token())

    def _bytes(self, tokens: int) -> float:
        return float(tokens * self.ctx.cost.model.kv_bytes_per_token())

    # ---- observations ----------------------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.tools.call_ready(call, now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.tools.call_finished(call, now)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.tools.workflow_finished(workflow.workflow)
