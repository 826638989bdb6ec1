"""``kvflow``: evict by steps-to-execution, prefetch from the host tier before the next call.

Source (docs/baselines.md section 6): Pan et al., "KVFlow: Efficient Prefix Caching
for Accelerating LLM-Based Multi-Agent Workflows", arXiv 2507.07400 (NeurIPS 2025);
code ``PanZaifeng/KVFlow`` (an SGLang fork with a host-tier radix cache). The
mechanism is reconstructed from the abstract, third-party reimplementations and
memory of the paper.

Steps to execution. KVFlow's Agent Step Graph gives each agent the number of
workflow steps before it runs next. Our agents are chains of calls of one
workflow, learned online from the calls we observe, so a workflow's steps are:
0 while one of its calls is ready, queued or running; 1 while it is in a tool
call (its next call is the next step of its graph); and infinity once it has
finished (the explicit end mark) or is unknown. A KV node takes the steps of its
workflow; a shared named prefix takes the *minimum* over the live workflows that
use it (the soonest user), and infinity when none does. Eviction takes the
evictable leaf with the *most* steps first, ties least recently released first
(KVFlow's LRU tie-break), so finished and dynamic KV goes before KV that is about
to run.

Overlapped prefetch. When a call finishes and its workflow goes on, its KV is
written back to the host tier and left evictable on the GPU; a prefetch is asked
for ``load_ahead`` seconds of host-link time before the predicted next call,
the predicted time being the ``prefetch_quantile`` of the observed tool
durations at this call site (cold start ``cold_start_tool_seconds``), so the KV
is back on the GPU when the call arrives even if it was evicted meanwhile.
Without a host tier this is a plain release. The last call of a workflow
releases. Status-aware scheduling (skipping calls whose KV is still loading) is
the engine's: a call waits for its host load without blocking the batch.

Queue order first come first served; routing by session affinity (``vllm-affinity``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from saga.engine.kvcache import EvictionOrder, KeyedEviction, KVNode
from saga.sched.baselines._shared import INF, ToolTimes, WorkflowActivity
from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import CallInfo, Policy, WorkflowInfo
from saga.sched.view import CallView, ReplicaView
from saga.sched.vllm import ConsistentHashRouter


class KVFlowConfig(BaseModel):
    """Prefetch timing knobs (reconstruction, see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cold_start_tool_seconds: float = Field(
        2.0, ge=0.0, description="Predicted tool time before a call site has samples."
    )
    min_samples: int = Field(10, ge=1, description="Durations needed before they are used.")
    sample_window: int = Field(1000, ge=1, description="Most recent durations kept per key.")
    prefetch_quantile: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Quantile of the tool-time distribution taken as the next call's time.",
    )
    load_ahead: float = Field(
        1.0, ge=0.0,
        description="Start the prefetch this many host-transfer times of the KV before the "
        "predicted call (KVFlow's load_ahead_step = 1).",
    )


class KVFlow(Policy):
    """Steps-to-execution eviction with prefetch from the host tier."""

    name = "kvflow"

    def __init__(self, config: KVFlowConfig | None = None) -> None:
        super().__init__(ConsistentHashRouter())
        self.config = config or KVFlowConfig()
        self.tools = ToolTimes(self.config.sample_window, self.config.min_samples)
        self.activity = WorkflowActivity()

    # ---- eviction ----------------------------------------------------------------------
    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return KeyedEviction("steps-to-execution", self.eviction_key)

    def eviction_key(self, node: KVNode, now: float) -> float:
        """Smaller is evicted first: minus the node's steps to execution."""
        return -self.node_steps(node)

    def node_steps(self, node: KVNode) -> float:
        namespace = node.namespace
        if namespace.startswith("w:"):
            return self.workflow_steps(namespace[2:])
        users = self.activity.shared_users.get(namespace, ())
        return min((self.workflow_steps(w) for w in users), default=INF)

    def workflow_steps(self, workflow: str) -> float:
        if self.activity.is_running(workflow):
            return 0.0
        return 1.0 if self.activity.is_live(workflow) else INF

    # ---- retention and prefetch -----------------------------------------------------------
    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        info = request.info
        if info is None or info.ends_workflow or replica.host is None:
            return RELEASE
        return Retention("offload", prefetch_at=self.prefetch_time(request, info, now))

    def prefetch_time(self, request: CallView, info: CallInfo, now: float) -> float:
        samples = self.tools.samples_for(info)
        if samples is None:
            predicted = self.config.cold_start_tool_seconds
        else:
            predicted = samples.quantile(self.config.prefetch_quantile)
        cost = self.ctx.cost
        tokens = request.prompt_tokens + request.generated
        transfer = cost.host_transfer_time(tokens * cost.model.kv_bytes_per_token())
        return now + max(0.0, predicted - self.config.load_ahead * transfer)

    # ---- observations ----------------------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.tools.call_ready(call, now)
        self.activity.call_ready(call)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.tools.call_finished(call, now)
        self.activity.call_finished(call)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.tools.workflow_finished(workflow.workflow)
        self.activity.workflow_finished(workflow.workflow)
