"""Placement: the replica with the least predicted completion time, affinity with stealing.

A call's predicted completion on replica r is

    backlog(r) + reload/prefill of the part of its prompt not cached on r + decode,

where ``backlog`` is the prefill work queued or running there plus, when the call's
blocks do not fit beside the memory held and awaited there, the time for running calls
to drain. Session
affinity falls out: on the replica holding a workflow's KV the prefill is short.
A workflow leaves its home (work stealing at a tool boundary) only when another
replica beats home by ``steal_margin`` and ``steal_min_gain`` (hysteresis, so
workflows do not flap). A new workflow goes to the best replica among those whose
working set (context tokens of the workflows homed there) is within
``colocate_slack`` of the least, so workflows sharing a prefix (an agent's system
prompt) co-locate, within load bounds, and working sets stay balanced.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from saga.sched.saga.config import SagaConfig

if TYPE_CHECKING:
    from saga.engine.costmodel import CostModel
    from saga.engine.kvcache import Run
    from saga.engine.replica import Replica


class Estimate(NamedTuple):
    """Predicted seconds of one call on one replica (a tuple: placements make many)."""

    replica: int
    backlog: float
    service: float  # reload + prefill + decode

    @property
    def completion(self) -> float:
        return self.backlog + self.service


class Predictor:
    """Turns replica state into seconds with the cost model."""

    def __init__(self, cost: CostModel, block_tokens: int) -> None:
        self.cost = cost
        self.block_tokens = block_tokens
        # Seconds per prefill token at a typical context, and per decode step of a
        # lone sequence: the units of backlog and of expected work.
        chunk, ctx = 8192, 16384
        self.t_token = cost.prefill_time(ctx + chunk, ctx) / chunk
        self.t_decode = cost.decode_steps_time(1, ctx, 1)
        # A placement asks the same few questions of every candidate (a candidate that
        # does not hold the workflow's KV has the same prefill ahead of it): memoized,
        # the cost model runs once per distinct question, not once per candidate.
        self._prefill = lru_cache(maxsize=4096)(cost.prefill_time)
        self._decode_step = lru_cache(maxsize=4096)(cost.decode_steps_time)

    def prefill(self, prompt: int, cached: int) -> float:
        return float(self._prefill(prompt, min(cached, prompt)))

    def backlog(self, replica: Replica, only_slo: bool = False) -> float:
        """Seconds of prefill work queued or running on ``replica`` (``only_slo``: of
        calls of interactive workflows only, those with an SLO)."""
        tokens = 0
        for r in replica.waiting:
            if not only_slo or (r.info is not None and r.info.slo is not None):
                tokens += r.prompt_tokens - min(r.computed, r.prompt_tokens)
        for r in replica.running:
            if not only_slo or (r.info is not None and r.info.slo is not None):
                tokens += max(0, r.total_tokens - r.computed - 1)
        return tokens * self.t_token

    def memory_wait(self, replica: Replica, need: int, drain: float) -> float:
        """Expected wait for ``need`` blocks: none if they are free (or evictable) now,
        else the share of the call that does not fit times ``drain``, the time for the
        running calls to finish and give their blocks back."""
        kv = replica.kv
        free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks
        if replica.waiting:
            free -= sum(r.total_tokens - r.computed for r in replica.waiting) // self.block_tokens
        if need <= free:
            return 0.0
        return drain * min(1.0, (need - max(free, 0)) / max(need, 1))

    def estimate(
        self,
        replica: Replica,
        runs: Sequence[Run],
        prompt: int,
        output: float,
    ) -> Estimate:
        bt = self.block_tokens
        gpu = replica.kv.match_blocks(runs)
        cached = gpu
        reload = 0.0
        host_tier = replica.host
        if host_tier is not None and host_tier.cached_blocks:
            host = host_tier.match_blocks(runs)
            if host > gpu:
                reload = self.cost.host_transfer_time((host - gpu) * replica.block_bytes)
                cached = host
        running = replica.running
        ctx = prompt
        for r in running:
            ctx += r.computed
        step = float(self._decode_step(len(running) + 1, ctx, 1))
        service = reload + self.prefill(prompt, cached * bt) + output * step
        wait = self.memory_wait(replica, -(-(prompt + int(output)) // bt) - cached, output * step)
        if running or replica.waiting:
            wait += self.backlog(replica)
        return Estimate(replica.index, wait, service)


def choose(
    estimates: Sequence[Estimate],
    home: int | None,
    homed: Sequence[float],
    config: SagaConfig,
) -> int:
    """The replica for a call, given its estimate on every up replica.

    ``home`` is the replica holding the workflow's KV (None for a new workflow);
    ``homed`` the context tokens of the workflows homed on each replica (their
    working set: they will come back to it).
    """
    by_index = {e.replica: e for e in estimates}
    best = min(estimates, key=lambda e: (e.completion, e.replica))
    if home is not None and home in by_index:
        if not config.steal:
            return home
        stay = by_index[home].completion
        gain = stay - best.completion
        if gain > config.steal_margin * stay and gain > config.steal_min_gain:
            return best.replica
        return home
    least = min(homed[e.replica] for e in estimates)
    bound = least * (1.0 + config.colocate_slack) + config.colocate_abs
    eligible = [e for e in estimates if homed[e.replica] <= bound]
    return min(eligible, key=lambda e: (e.completion, e.replica)).replica
