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
The last two fold when the runtime brings every folded replica up to the clock before
any hook that may change the policy's state (``Replica.fold_under_hooks``): then the
keys asked at a boundary's instant, later, read the state of that instant.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.engine.replica import Replica, Request


Fold = tuple[float, int, tuple[int, ...]]
"""One run of a fold after the current one: (its end, its steps, the positions in the
batch of the calls that take a block at its start, ascending)."""


def fold_boundaries(
    replica: Replica, now: float, batch: list[tuple[Request, int]], steps: int
) -> list[Fold]:
    """The runs that would follow the run of ``steps`` decode steps just planned at
    ``now`` on ``replica`` (ending at ``replica.step_end``), each continuing the one
    before at a block boundary; empty when the run does not end at one that can be
    folded."""
    kv = replica.kv
    under_hooks = replica.fold_under_hooks
    if (
        not (kv.eviction.static or under_hooks)
        or replica.waiting
        or kv.free_blocks
        or len(batch) > replica.config.max_num_batched_tokens
        or (
            len(batch) > 1
            and (replica._running_unsorted or not (replica.hooks.static_order or under_hooks))
        )
    ):
        return []
    left = min(r.output_tokens - r.generated for r, _ in batch) - steps
    if left <= 0:
        return []  # the run ends a call: its end is the general path's
    bt = replica.block_tokens
    # Each call's next block boundary, in steps from the run's start: where the tokens
    # in KV reach the blocks it holds (then every bt steps, one block at a time).
    crossings = [
        ((r.locked_blocks + r.anon) * bt - r.computed, i) for i, (r, _) in enumerate(batch)
    ]
    heapq.heapify(crossings)
    # calls whose prompt's keyed blocks are not all cached: a run requires
    # locked_blocks >= min(tokens // bt, keyed_blocks), which their growth may break
    partial = [
        (r.computed, r.locked_blocks, r.keyed_blocks)
        for r, _ in batch
        if r.locked_blocks < r.keyed_blocks
    ]
    n = len(batch)
    cost = replica.cost
    context = replica._run_ctx + n * steps
    available = kv.available_blocks
    end = replica.step_end
    done = steps  # steps taken since the run's start
    folds: list[Fold] = []
    while True:
        # _continue_run at the boundary: every call at a block's end takes one more
        grow: list[int] = []
        while crossings[0][0] == done:
            _, i = crossings[0]
            heapq.heapreplace(crossings, (done + bt, i))
            grow.append(i)
        if len(grow) > available:
            break
        available -= len(grow)  # no block is free: each is evicted, in the cache's order
        # _decode_run_length of the continued batch
        if any(locked < min((c + done + 1) // bt, keyed) for c, locked, keyed in partial):
            break
        if left <= 1:
            break
        room = crossings[0][0] - done
        run = left
        if run > room:  # still no free block: up to the next boundary
            if room <= 1:
                break
            run = room
        end = end + cost.decode_steps_time(n, context, run)
        grow.sort()
        folds.append((end, run, tuple(grow)))
        context += n * run
        done += run
        left -= run
        if left <= 0:
            break  # this run ends a call
    return folds
