"""``llm-d``: llm-d's endpoint picker (EPP) with its default profile, and its flow control.

Source (docs/baselines.md section 11): ``llm-d/llm-d-inference-scheduler`` (the
"llm-d router", which now holds the Gateway API Inference Extension's EPP).

Routing, per call, over the replicas that are up
(``pkg/epp/config/loader/defaults.go``, ``loadDefaultConfig``: one profile,
``queue-scorer`` weight 2, ``kv-cache-utilization-scorer`` weight 2,
``prefix-cache-scorer`` weight 3, ``max-score-picker``):

* queue score = ``(max_q - q) / (max_q - min_q)`` over the waiting-queue sizes,
  1 for all when they are equal (``scorer/queuedepth/queue.go``);
* KV score = ``1 - kv_cache_usage`` (``scorer/kvcacheutilization``), with vLLM's
  usage: blocks referenced by requests over all blocks (cached free blocks count
  as free);
* prefix score = matched blocks / prompt blocks (``scorer/prefix/plugin.go``),
  from the router's *approximate* index of what it routed
  (``dataproducer/approximateprefix``): prompts hashed in 16-token blocks,
  only the first ``maxPrefixBlocksToMatch = 256`` blocks (4096 tokens), an LRU
  index per server sized to the server's KV blocks (``autoTune``), filled when a
  request is routed and never told of engine evictions;
* total = sum of weight x score (each clamped to [0, 1],
  ``scheduling/scheduler_profile.go``); the highest total wins, ties at random
  (the picker shuffles before a stable sort; ``picker/maxscore/picker.go``).

Flow control (``pkg/epp/flowcontrol``; feature gate ``flowControl``): requests
wait in priority bands while the pool is saturated. The default saturation
detector (``saturationdetector/utilization``) scores each replica
``max(waiting / 5, kv_usage / 0.8)`` and the pool by the mean; the default
usage limit (``usagelimits``, static threshold 1.0) stops dispatch while the
pool's saturation is at least 1.0; bands are served highest priority first,
first come first served inside a band (``DefaultOrderingPolicyRef = fcfs``,
fairness ``global-strict``), with head-of-line blocking (``processor.go``,
``dispatchCycle``). ``llm-d`` puts every request in one band (priority 0);
``llm-d+priority`` gives interactive tenants (an SLO) a band above best effort
(an ``InferenceObjective`` priority of 1 against 0).

Simplification, stated: our simulator has no gateway-side queue of calls, so
flow control holds a workflow before its first call (through ``admit``) rather
than each call; calls of workflows already in flight are dispatched at once.
A held workflow asks again every ``retry_after`` seconds, so within a band the
order is first come first served up to that period. This favours llm-d (the
calls of a workflow in flight are never held back).
"""

from __future__ import annotations

from collections import deque

from pydantic import BaseModel, ConfigDict, Field

from saga.engine.kvcache import Run
from saga.sched.baselines._shared import RoutedPrefixIndex, run_blocks
from saga.sched.decisions import ADMIT, Admission
from saga.sched.policy import CallInfo, Policy, PolicyContext, Router, WorkflowInfo


class LLMDConfig(BaseModel):
    """llm-d's endpoint picker and flow control knobs; defaults are llm-d's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_weight: float = Field(2.0, ge=0.0, description="Weight of `queue-scorer`.")
    kv_cache_weight: float = Field(
        2.0, ge=0.0, description="Weight of `kv-cache-utilization-scorer`."
    )
    prefix_weight: float = Field(3.0, ge=0.0, description="Weight of `prefix-cache-scorer`.")
    prefix_block_tokens: int = Field(
        16, ge=1, description="Tokens per hashed prompt block (`blockSizeTokens`)."
    )
    max_prefix_blocks: int = Field(
        256, ge=1, description="Prompt blocks hashed and matched (`maxPrefixBlocksToMatch`)."
    )
    flow_control: bool = Field(
        True, description="Hold work while the pool is saturated (feature gate `flowControl`)."
    )
    queue_depth_threshold: int = Field(
        5, ge=1, description="Saturation detector: waiting requests per replica at saturation."
    )
    kv_cache_util_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Saturation detector: KV usage at saturation."
    )
    usage_limit: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Static usage limit: dispatch stops while the pool's saturation reaches it.",
    )
    priority_bands: bool = Field(
        False, description="Interactive tenants (an SLO) in a band above best effort."
    )
    retry_after: float = Field(
        1.0, gt=0.0, description="Seconds before a held workflow asks again (simulator only)."
    )


def take_runs(runs: tuple[Run, ...], blocks: int) -> tuple[Run, ...]:
    """The first ``blocks`` blocks of ``runs``."""
    taken: list[Run] = []
    for namespace, first, count in runs:
        if blocks <= 0:
            break
        n = min(count, blocks)
        taken.append((namespace, first, n))
        blocks -= n
    return tuple(taken)


class EndpointPicker(Router):
    """llm-d's default scheduling profile: weighted queue, KV and prefix scores."""

    name = "llm-d-epp"

    def __init__(self, config: LLMDConfig) -> None:
        self.config = config

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.index = RoutedPrefixIndex([r.kv.capacity for r in ctx.replicas])
        hashed_tokens = self.config.max_prefix_blocks * self.config.prefix_block_tokens
        self.max_blocks = max(1, hashed_tokens // ctx.block_tokens)

    def scores(self, call: CallInfo) -> dict[int, float]:
        """The weighted total of each up replica."""
        ups = self.up_replicas()
        replicas = self.ctx.replicas
        cfg = self.config
        queues = {i: len(replicas[i].waiting) for i in ups}
        low, high = min(queues.values()), max(queues.values())
        hashed = take_runs(call.runs, self.max_blocks)
        total_blocks = run_blocks(hashed)
        totals: dict[int, float] = {}
        for i in ups:
            queue = 1.0 if high == low else (high - queues[i]) / (high - low)
            kv = 1.0 - kv_usage(self.ctx, i)
            prefix = self.index.matched(i, hashed) / total_blocks if total_blocks else 0.0
            totals[i] = (
                cfg.queue_weight * _clamp(queue)
                + cfg.kv_cache_weight * _clamp(kv)
                + cfg.prefix_weight * _clamp(prefix)
            )
        return totals

    def place(self, call: CallInfo, now: float) -> int:
        totals = self.scores(call)
        best = max(totals.values())
        tied = [i for i, score in totals.items() if score == best]
        choice = tied[0] if len(tied) == 1 else self.ctx.rng.choice(tied)
        self.index.add(choice, take_runs(call.runs, self.max_blocks), now)
        return choice


def kv_usage(ctx: PolicyContext, replica: int) -> float:
    """vLLM's ``kv_cache_usage_perc``: blocks held by requests over all blocks."""
    kv = ctx.replicas[replica].kv
    return (kv.locked_blocks + kv.anonymous_blocks) / kv.capacity if kv.capacity else 1.0


def _clamp(score: float) -> float:
    return min(1.0, max(0.0, score))


class FlowControl:
    """Priority bands, first come first served inside each, held while saturated."""

    def __init__(self, config: LLMDConfig) -> None:
        self.config = config
        self.bands: dict[int, deque[str]] = {}
        self.band_of: dict[str, int] = {}

    def saturation(self, ctx: PolicyContext) -> float:
        """The utilization detector's pool saturation: mean over replicas of
        ``max(waiting / queue threshold, KV usage / KV threshold)``."""
        cfg = self.config
        ups = [r for r in ctx.replicas if r.up]
        if not ups:
            return 1.0
        total = sum(
            max(len(r.waiting) / cfg.queue_depth_threshold,
                kv_usage(ctx, r.index) / cfg.kv_cache_util_threshold)
            for r in ups
        )
        return total / len(ups)

    def decide(self, workflow: str, priority: int, saturation: float) -> Admission:
        if workflow not in self.band_of:
            self.band_of[workflow] = priority
            self.bands.setdefault(priority, deque()).append(workflow)
        if saturation >= self.config.usage_limit:
            return Admission(
                "defer",
                f"llm-d flow control: pool saturation {saturation:.2f} >= usage limit "
                f"{self.config.usage_limit:g}; {len(self.band_of)} requests queued",
                self.config.retry_after,
            )
        higher = [p for p, band in self.bands.items() if band and p > priority]
        if higher:
            return Admission(
                "defer", f"llm-d flow control: band {max(higher)} is served first",
                self.config.retry_after,
            )
        self.forget(workflow)
        return ADMIT

    def forget(self, workflow: str) -> None:
        priority = self.band_of.pop(workflow, None)
        if priority is not None:
            self.bands[priority].remove(workflow)


class LLMD(Policy):
    """llm-d: weighted scorers (queue 2, KV 2, prefix 3), flow control at saturation."""

    name = "llm-d"

    def __init__(self, config: LLMDConfig | None = None) -> None:
        self.config = config or LLMDConfig()
        self.picker = EndpointPicker(self.config)
        self.flow = FlowControl(self.config)
        super().__init__(self.picker)

    def priority(self, workflow: WorkflowInfo) -> int:
        if self.config.priority_bands and workflow.slo is not None:
            return 1
        return 0

    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        if not self.config.flow_control:
            return ADMIT
        saturation = self.flow.saturation(self.ctx)
        return self.flow.decide(workflow.workflow, self.priority(workflow), saturation)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        self.flow.forget(workflow.workflow)


class LLMDPriority(LLMD):
    """llm-d with interactive tenants in a priority band above best effort."""

    name = "llm-d+priority"

    def __init__(self) -> None:
        super().__init__(LLMDConfig(priority_bands=True))
