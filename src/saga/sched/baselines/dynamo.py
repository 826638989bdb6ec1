"""``dynamo``: NVIDIA Dynamo's KV router with its default cost, and its router queue.

Source (docs/baselines.md section 12): ``ai-dynamo/dynamo``,
``lib/kv-router/src/scheduling/selector/default.rs`` (``worker_logit``,
``minimum_cost_index``, ``softmax_sample_index``) and
``lib/kv-router/src/scheduling/config.rs`` (``KvRouterConfig::default``).

For each call and each replica that is up, in KV blocks:

    cost = prefill_load_scale * max(0, raw_prefill_blocks - overlap_score_credit * overlap)
         + potential_decode_blocks
         + decode_active_request_weight * active_requests

* ``raw_prefill_blocks`` = (prefill tokens already pending on the replica + the
  call's prompt tokens) / block size, and ``overlap`` = the call's prompt blocks
  cached on the replica (with KV events, the default, the router's index is the
  engine's cache): so the prefill term is the prefill the replica has ahead of
  it plus this call's uncached prompt;
* ``potential_decode_blocks`` = the blocks of the router's active sequences on
  the replica (routed, not finished; prompt blocks, deduplicated, since
  ``router_assume_kv_reuse`` is on and ``router_track_output_blocks`` off) plus
  the call's blocks not among them;
* defaults: ``overlap_score_credit = 1.0``, ``prefill_load_scale = 1.0``
  (the deprecated ``overlap_score_weight`` maps to it), ``decode_active_request_weight
  = 0.0``, ``router_temperature = 0.0``: the lowest cost wins, ties at random;
  a positive temperature samples a softmax of the costs normalised by their
  range.

Router queue (``router_queue_threshold = 16.0``, ``router_queue_policy = fcfs``):
while *every* replica has more than 16 x its ``max_num_batched_tokens`` of
prefill tokens pending, requests wait at the router, first come first served.
As for llm-d's flow control (see :mod:`~saga.sched.baselines.llmd`), our
simulator holds a workflow before its first call rather than each call, and a
held workflow asks again every ``retry_after`` seconds (the first to ask once a
replica has room goes: first come first served up to that period).

Units: our blocks are the trace's 64-token blocks, not the engine's 16; every
term is in blocks, so the ranking is the same (the request-count term, off by
default, would need rescaling). Pending prefill tokens are the engine's
(prompt tokens not yet computed, ``backlog_tokens``); Dynamo counts the same
tokens from its own bookkeeping (uncached prompt at routing, cleared at the
first token).

``dynamo+priority`` gives interactive tenants (an SLO) what Dynamo offers for
service levels (docs.nvidia.com/dynamo, "Priority Scheduling"; request field
``nvext.agent_hints``): ``strict_priority = 1`` (a router-queue tier that always
goes ahead of lower tiers) and a ``priority`` that Dynamo forwards to the
engine, here vLLM with ``--scheduling-policy priority``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from saga.engine.kvcache import Run
from saga.sched.decisions import ADMIT, Admission
from saga.sched.policy import CallInfo, Policy, PolicyContext, Router, WorkflowInfo
from saga.sched.vllm import request_priority

if TYPE_CHECKING:
    from saga.sched.view import CallView, ReplicaView

#: Dynamo's ``DEFAULT_MAX_BATCHED_TOKENS`` for a worker that reports none (no queueing).
DEFAULT_MAX_BATCHED_TOKENS = 10_000_000


class DynamoConfig(BaseModel):
    """Dynamo KV router knobs; defaults are ``KvRouterConfig::default()``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    overlap_score_credit: float = Field(
        1.0, ge=0.0, le=1.0, description="Credit per cached prompt block against the prefill."
    )
    prefill_load_scale: float = Field(
        1.0, ge=0.0, description="Scale of the prefill term (the old `overlap_score_weight`)."
    )
    decode_active_request_weight: float = Field(
        0.0, ge=0.0, description="Blocks charged per active request (opt-in)."
    )
    router_temperature: float = Field(
        0.0, ge=0.0, description="0: lowest cost (ties at random); > 0: softmax sampling."
    )
    router_queue_threshold: float | None = Field(
        16.0, ge=0.0,
        description="Hold work while every replica has more than this x max_num_batched_tokens "
        "of prefill pending; None: no router queue.",
    )
    retry_after: float = Field(
        1.0, gt=0.0, description="Seconds before a held workflow asks again (simulator only)."
    )


class ActiveSequences:
    """The router's active sequences on one replica: prompt blocks of routed calls not
    yet finished, deduplicated (a block shared by two calls counts once)."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], tuple[Run, ...]] = {}
        self._intervals: dict[str, Counter[tuple[int, int]]] = {}
        self._blocks: dict[str, int] = {}  # namespace -> distinct active blocks
        self.blocks = 0

    def add(self, key: tuple[str, str], runs: tuple[Run, ...]) -> None:
        self.calls[key] = runs
        for namespace, first, count in runs:
            self._intervals.setdefault(namespace, Counter())[(first, count)] += 1
            self._recount(namespace)

    def remove(self, key: tuple[str, str]) -> None:
        runs = self.calls.pop(key, None)
        if runs is None:
            return
        for namespace, first, count in runs:
            intervals = self._intervals[namespace]
            intervals[(first, count)] -= 1
            if intervals[(first, count)] <= 0:
                del intervals[(first, count)]
            if not intervals:
                del self._intervals[namespace]
            self._recount(namespace)

    def new_blocks(self, runs: tuple[Run, ...]) -> int:
        """Blocks of ``runs`` not among the active ones."""
        new = 0
        for namespace, first, count in runs:
            covered = 0
            for lo, hi in _merged(self._intervals.get(namespace, {})):
                covered += max(0, min(hi, first + count) - max(lo, first))
            new += count - covered
        return new

    def _recount(self, namespace: str) -> None:
        self.blocks -= self._blocks.pop(namespace, 0)
        intervals = self._intervals.get(namespace)
        if intervals:
            n = sum(hi - lo for lo, hi in _merged(intervals))
            self._blocks[namespace] = n
            self.blocks += n


def _merged(intervals: Mapping[tuple[int, int], int]) -> list[tuple[int, int]]:
    """The union of ``(first, count)`` intervals as sorted disjoint ``[lo, hi)``."""
    merged: list[tuple[int, int]] = []
    for first, count in sorted(intervals):
        lo, hi = first, first + count
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


class KVRouter(Router):
    """Dynamo's default worker selector: lowest overlap-credited prefill plus decode blocks."""

    name = "dynamo-kv"

    def __init__(self, config: DynamoConfig) -> None:
        self.config = config

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.active = [ActiveSequences() for _ in ctx.replicas]
        self.where: dict[tuple[str, str], int] = {}  # active call -> its replica

    def cost(self, replica_index: int, call: CallInfo) -> float:
        cfg = self.config
        replica = self.ctx.replicas[replica_index]
        bt = self.ctx.block_tokens
        overlap = replica.cached_blocks_for(call.runs)
        raw_prefill = (replica.backlog_tokens + call.prompt_tokens) / bt
        prefill = max(0.0, raw_prefill - cfg.overlap_score_credit * overlap)
        active = self.active[replica_index]
        decode = active.blocks + active.new_blocks(call.runs)
        requests = cfg.decode_active_request_weight * len(active.calls)
        return cfg.prefill_load_scale * prefill + decode + requests

    def costs(self, call: CallInfo) -> dict[int, float]:
        return {i: self.cost(i, call) for i in self.up_replicas()}

    def place(self, call: CallInfo, now: float) -> int:
        costs = self.costs(call)
        if self.config.router_temperature > 0.0:
            choice = self._softmax(costs)
        else:
            low = min(costs.values())
            tied = [i for i, c in costs.items() if c == low]
            choice = tied[0] if len(tied) == 1 else self.ctx.rng.choice(tied)
        key = (call.workflow, call.call_id)
        moved = self.where.pop(key, None)
        if moved is not None:  # placed again (its replica failed): it left that one
            self.active[moved].remove(key)
        self.active[choice].add(key, call.runs)
        self.where[key] = choice
        return choice

    def _softmax(self, costs: dict[int, float]) -> int:
        """Sample by ``exp(-(cost - min) / ((max - min) * temperature))``; uniform when
        all costs are equal."""
        low, high = min(costs.values()), max(costs.values())
        rows = list(costs)
        if high == low:
            weights = [1.0] * len(rows)
        else:
            scale = (high - low) * self.config.router_temperature
            weights = [math.exp(-(costs[i] - low) / scale) for i in rows]
        return self.ctx.rng.choices(rows, weights)[0]

    def finished(self, call: CallInfo, replica: int) -> None:
        key = (call.workflow, call.call_id)
        self.active[self.where.pop(key, replica)].remove(key)

    def all_busy(self) -> bool:
        """Every up replica has more prefill pending than the queue threshold allows."""
        threshold = self.config.router_queue_threshold
        if threshold is None:
            return False
        ups = [r for r in self.ctx.replicas if r.up]
        return bool(ups) and all(
            r.backlog_tokens > threshold * _max_batched_tokens(r) for r in ups
        )


def _max_batched_tokens(replica: ReplicaView) -> int:
    """The worker's ``max_num_batched_tokens`` as registered with the router."""
    return replica.max_num_batched_tokens


class Dynamo(Policy):
    """Dynamo's KV router (default cost, temperature 0) and its router queue."""

    name = "dynamo"

    def __init__(self, config: DynamoConfig | None = None) -> None:
        self.config = config or DynamoConfig()
        self.kv_router = KVRouter(self.config)
        # workflows held by the router queue -> their strict-priority tier (in arrival
        # order; one that asks when a replica has room goes, so the order holds up to
        # ``retry_after``)
        self.pending: dict[str, int] = {}
        super().__init__(self.kv_router)

    def strict_priority(self, workflow: WorkflowInfo) -> int:
        """The request's ``strict_priority`` tier (none is sent: 0)."""
        return 0

    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        tier = self.strict_priority(workflow)
        if not self.kv_router.all_busy():
            if not any(t > tier for t in self.pending.values()):
                self.pending.pop(workflow.workflow, None)
                return ADMIT
            reason = "dynamo router queue: a higher strict-priority tier goes first"
        else:
            reason = (
                f"dynamo router queue: every replica has more than "
                f"{self.config.router_queue_threshold:g} x max_num_batched_tokens of prefill "
                f"pending; {len(self.pending) + 1} queued"
            )
        self.pending.setdefault(workflow.workflow, tier)
        return Admission("defer", reason, self.config.retry_after)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.kv_router.finished(call, replica)

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        self.pending.pop(workflow.workflow, None)


class DynamoPriority(Dynamo):
    """Dynamo with interactive tenants (an SLO) marked by ``nvext.agent_hints``:
    ``strict_priority`` 1 ahead in the router queue, and a ``priority`` that Dynamo
    forwards to vLLM's priority scheduling (interactive first, see
    :mod:`saga.sched.vllm`)."""

    name = "dynamo+priority"

    def strict_priority(self, workflow: WorkflowInfo) -> int:
        return 1 if workflow.slo is not None else 0

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return (request_priority(request), request.enqueued_at, request.seq)
