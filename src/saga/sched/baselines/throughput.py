"""``throughput``: the throughput-optimal reference for peak throughput.

Not a published policy; docs/baselines.md section 9 defines it: vLLM engine
semantics (first come first served, chunked prefill, prefix caching, LRU eviction,
preemption by recompute), no pinning, and least-loaded routing. Load is measured
in work, not calls: a call goes to the replica whose outstanding tokens (prefill
and decode still to do for its queued and running calls) *plus the call's own
uncached prompt there* are fewest, ties to the lowest index. Counting the call's
uncached prefill makes least-loaded routing see prefix hits, so that it does not
pay for re-prefills a load-blind router would cause: both terms are the work the
replica must do.

The batch size (``max_num_seqs``, ``max_num_batched_tokens``) is the cluster's
engine configuration, not the policy's; for peak-throughput sweeps use the
offline ``LLM``-class defaults of the preset (16384 tokens / 1024 sequences on
H100-class GPUs, 8192 / 256 on A100), per docs/baselines.md.
"""

from __future__ import annotations

from saga.sched.policy import CallInfo, Policy, Router


class LeastWorkRouter(Router):
    """Fewest outstanding tokens after adding this call's uncached prompt."""

    name = "least-work"

    def place(self, call: CallInfo, now: float) -> int:
        return min(self.up_replicas(), key=lambda i: (self.work_after(i, call), i))

    def work_after(self, replica_index: int, call: CallInfo) -> int:
        replica = self.ctx.replicas[replica_index]
        cached = replica.cached_blocks_for(call.runs) * self.ctx.block_tokens
        return replica.outstanding_tokens() + max(0, call.prompt_tokens - cached)


class Throughput(Policy):
    """Least-work routing, FCFS, no pinning, LRU eviction."""

    name = "throughput"

    def __init__(self) -> None:
        super().__init__(LeastWorkRouter())
