"""Which mixed steps (one prefill chunk beside decodes) can be folded into one event.

Under the decode guard (:mod:`saga.sched.saga.chunking`) a long prompt beside two or more
decoding calls advances 112 tokens a step on ``a100-8-70b`` (7/128 of its 2,048-token step
budget): a 40k-token prefill takes about 360 steps, each an event with its batch formation
and hooks. When nothing else happens on
the replica, each of those steps is the same batch as the one before: every running call,
the decodes one token each and the one prefilling call the next chunk. The chunk and the
step's time follow from the state alone, so :func:`fold_mixed_steps` predicts the ends of
the steps that follow the one just planned (and which decodes take a block at each) and
the replica's event moves to the last one; ``Replica.sync`` then applies at each step's
end, at its own instant, what that end and the planning after it change (the prompt's
chunk and cached blocks, the blocks taken, the counters), whenever someone reads the
replica, a policy hook runs (``sim/fold_barrier.py``) or the fold's event ends.

The prediction stops, leaving the general path to the event at that step's end, at:

* the step that completes the prompt (its first token: the guard's count of decodes may
  change) or ends a decode's output (a call finishing asks the policy for its retention);
* a step whose new blocks (a decode at a block's end, the chunk's blocks) exceed the free
  and evictable blocks left after the fold's own allocations (the general path would give
  up pins or preempt).

Waiting calls do not change these steps when the chunk takes all the step's prompt tokens
(``_admit_waiting`` then has no budget to admit with; it only sorts the queue) and the batch
has room for more calls (else planning asks the policy whether to preempt for the first
waiting call): with calls waiting, the fold stops before a step whose chunk is smaller.

It folds nothing when anything else could change the batch: the batch at ``max_num_seqs``
with calls waiting, a call not in the batch (a host load), a second prefilling call
(the chunks' split would depend on the queue order), a decode that is not a plain one
(its prompt's keyed blocks not all cached, or recomputing), a prefill limit that leaves no
room for every decode in the token budget (the chunk would depend on its place in the
order), or a runtime that does not bring the replica up to date before policy hooks when
the queue or eviction order reads the policy's state. Events that reach the replica (an
arrival, a call ready) cut the fold at the step in flight (``Replica.interrupt``).

Why the step times are exact: a step's time is ``CostModel.step_time`` of the batch's
token count, attention work, KV read and size. The attention work is a float sum, in batch
order, of ``q * (c + (q + 1) / 2)``, which is a whole number for every ``q`` (``q + 1`` is
even or ``q`` is); every partial sum is a whole number below 2**53, so the float sum is
exact in any order and equals the integer computed here. Each end is the previous end plus
the step's time, the same float addition as stepping's ``now + duration``.

One assumption, of the policy: every folded step is planned with the prefill limit the
policy gave the step in flight, so ``prefill_limit`` must give the same at each folded
step's start. Every policy's limit is None or the decode guard's
(``sched/saga/chunking.py``, ``step_prefill_limit``), which reads the engine's step budget,
the length of the replica's waiting queue (with ``decode_guard_backlog`` set: from that many
waiting calls, the backlog's share) and how many running calls decode (with
``decode_guard_per_decode``, its tokens scale with that count), never the time. Within a
fold none of them changes: the budget is the engine's, no call starts or stops decoding
before the fold's last step (it ends at the prompt's first token and at a decode's last),
and the queue neither grows (an arrival or a call ready cuts the fold) nor shrinks (no
call is admitted: above).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.engine.replica import Replica, Request

MixedFold = tuple[float, int, tuple[int, ...]]
"""One step of a mixed fold after the current one: (its end, the prefill chunk it computes,
the positions in the batch of the decodes that take a block at its start, ascending)."""

_EXACT = 2**52
"""Attention sums below this are whole numbers that floats hold exactly, in any order."""

_NO_DECODE = 2**62
"""A step number no fold reaches: the crossing and the output left of no decode."""


def fold_mixed_steps(
    replica: Replica, batch: list[tuple[Request, int]], limit: int | None
) -> list[MixedFold]:
    """The steps that would follow the mixed step just planned on ``replica`` (ending at
    ``replica.step_end``) with the same batch, each planned at the previous one's end;
    empty when the step cannot be followed by a folded one. ``limit`` is the prefill limit
    the policy gave the step."""
    if len(batch) != len(replica.running) or not replica.decode_runs:
        return []  # (decode_runs is off when the host's other replicas time the steps)
    waiting = bool(replica.waiting)
    if waiting and len(batch) >= replica.config.max_num_seqs:
        return []  # planning would ask the policy whether to preempt for the first waiting
    kv = replica.kv
    under_hooks = replica.fold_under_hooks
    if not (kv.eviction.static or under_hooks) or not (replica.hooks.static_order or under_hooks):
        return []
    bt = replica.block_tokens
    prefilling: Request | None = None
    chunk = 0
    decode_context = 0  # tokens in KV of the decodes after the step in flight
    # the fewest output tokens a decode has left after the step in flight (none: no bound)
    fewest_left = _NO_DECODE
    # (the step at which a decode takes a block, its index), and one that never comes
    crossings: list[tuple[int, int]] = [(_NO_DECODE, -1)]
    for index, (request, q) in enumerate(batch):
        computed = request.computed
        total = request.prompt_tokens + request.generated
        if total - computed > 1:
            if prefilling is not None:
                return []  # two prefilling calls: the chunks' split follows the order
            prefilling, chunk = request, q
            continue
        if (
            q != 1
            or request.generated == 0  # its prompt's last token: a first token
            or request.recompute_base >= 0
            or request.locked_blocks < request.keyed_blocks
        ):
            return []
        computed += 1  # after the step in flight
        decode_context += computed
        left = request.output_tokens - request.generated - 1
        if left < fewest_left:
            fewest_left = left
        # the steps after this one are numbered from 1; step k computes token computed + k
        crossings.append(((request.locked_blocks + request.anon) * bt - computed + 1, index))
    if prefilling is None or fewest_left <= 0:
        return []  # no chunk, or a decode ends in the step in flight
    decodes = len(batch) - 1
    budget = replica.config.max_num_batched_tokens
    prefill = budget if limit is None else limit
    if prefill + decodes > budget:
        return []  # the chunk would depend on how many decodes precede it in the order
    prompt_computed = prefilling.computed + chunk
    prompt_left = prefilling.prompt_tokens + prefilling.generated - prompt_computed
    if (
        chunk != min(prompt_left + chunk, prefill)
        or prompt_left <= 0
        or prefilling.generated >= prefilling.output_tokens
    ):
        return []  # not the chunk the rule gives, or the prompt ends in the step in flight
    held = prefilling.locked_blocks + prefilling.anon
    heapq.heapify(crossings)
    available = kv.available_blocks
    cost = replica.cost
    n = len(batch)
    end = replica.step_end
    folds: list[MixedFold] = []
    step = 0
    while True:
        step += 1
        q = prompt_left if prompt_left < prefill else prefill
        if waiting and q < prefill:
            break  # the chunk leaves prompt tokens to admit a waiting call with
        # planning at the previous end: the chunk's blocks and each decode at a block's end
        grown = -(-(prompt_computed + q) // bt)
        need = grown - held if grown > held else 0
        grow: list[int] = []
        while crossings[0][0] == step:
            grow.append(crossings[0][1])
            heapq.heapreplace(crossings, (step + bt, crossings[0][1]))
        need += len(grow)
        if need > available:
            break  # the general path gives up pins or preempts
        available -= need
        if grown > held:
            held = grown
        attention = decode_context + decodes + q * (2 * prompt_computed + q + 1) // 2
        kv_read = decode_context + decodes + prompt_computed + q
        if attention >= _EXACT:
            break
        end = end + cost.step_time(decodes + q, float(attention), kv_read, n)
        grow.sort()
        folds.append((end, q, tuple(grow)))
        prompt_computed += q
        prompt_left -= q
        decode_context += decodes
        fewest_left -= 1
        if prompt_left <= 0 or fewest_left <= 0:
            break  # the step that ends the prompt or a decode's output is the fold's last
    return folds
