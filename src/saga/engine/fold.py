"""Which block boundaries of a memory-bound decode run can be folded into its event.

A decode run on a replica with no free block ends where its first call runs out of the
blocks it holds (``Replica._decode_run_length``). What stepping does there is mechanical
when nothing else happens on the replica: the run ends, planning at that instant
continues it (``Replica._continue_run``: each call at a block's end takes one more,
evicting a cached block in the cache's order), and a new run starts, again up to the
next block boundary. :func:`fold_boundaries` predicts those runs from the replica's
state, so that the whole chain is one event; ``Replica.sync`` applies each boundary at
its own instant when someone reads the replica before the chain's end.

The prediction mirrors the conditions of the step-by-step path exactly and stops where
any of them fails: a boundary that needs more blocks than are free or evictable (the
general path preempts), a call whose next run would be a single step, a call ending
(the run that ends it is the chain's last), or a run whose planning would ask the
policy (more than one call under a dynamic queue order) or evict by a policy's key
(a keyed eviction order reads the policy's state, which other events change meanwhile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.engine.replica import Replica, Request


def fold_boundaries(
    replica: Replica, now: float, batch: list[tuple[Request, int]], steps: int
) -> list[float]:
    """The ends of the runs that would follow the run of ``steps`` decode steps just
    planned at ``now`` on ``replica`` (ending at ``replica.step_end``), each continuing
    the one before at a block boundary; empty when the run does not end at one that
    can be folded."""
    kv = replica.kv
    if (
        not kv.eviction.static
        or replica.waiting
        or kv.free_blocks
        or len(batch) > replica.config.max_num_batched_tokens
        or (len(batch) > 1 and (replica._running_unsorted or not replica.hooks.static_order))
    ):
        return []
    left = min(r.output_tokens - r.generated for r, _ in batch) - steps
    if left <= 0:
        return []  # the run ends a call: its end is the general path's
    bt = replica.block_tokens
    computed = [r.computed + steps for r, _ in batch]
    blocks = [r.locked_blocks + r.anon for r, _ in batch]
    # calls whose prompt's keyed blocks are not all cached: a run requires
    # locked_blocks >= min(tokens // bt, keyed_blocks), which their growth may break
    partial = [
        (i, r.locked_blocks, r.keyed_blocks)
        for i, (r, _) in enumerate(batch)
        if r.locked_blocks < r.keyed_blocks
    ]
    n = len(batch)
    cost = replica.cost
    context = replica._run_ctx + n * steps
    available = kv.available_blocks
    end = replica.step_end
    ends: list[float] = []
    while True:
        # _continue_run at the boundary: every call at a block's end takes one more
        need = 0
        for i in range(n):
            more = -(-(computed[i] + 1) // bt) - blocks[i]
            if more > 0:
                need += more
                blocks[i] += more
        if need > available:
            break
        available -= need  # no block is free: each is evicted, in the cache's order
        # _decode_run_length of the continued batch
        if any(locked < min((computed[i] + 1) // bt, keyed) for i, locked, keyed in partial):
            break
        if left <= 1:
            break
        room = min(b * bt - c for b, c in zip(blocks, computed, strict=True))
        run = left
        if run > room:  # still no free block: up to the next boundary
            if room <= 1:
                break
            run = room
        end = end + cost.decode_steps_time(n, context, run)
        ends.append(end)
        context += n * run
        left -= run
        if left <= 0:
            break  # this run ends a call
        for i in range(n):
            computed[i] += run
    return ends
