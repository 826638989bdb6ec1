"""A decode run that ends where a call needs a block continues without forming its batch
again (``Replica._continue_run``), and a run on a full cache is sized without bisection:
both must leave exactly the state the general path leaves."""

from __future__ import annotations

import random

import pytest
from tests.engine.test_replica import BT, Hooks, make_replica, request

from saga.engine.replica import Replica, Request, _run_need


def snapshot(replica: Replica, made: list[Request]) -> tuple[object, ...]:
    """Everything a step can change: each call's progress and holdings (``made``: every
    call enqueued so far, finished ones too), the cache's counts and integrals, the
    replica's counters and the step in flight."""
    calls = tuple(
        (
            r.workflow, r.computed, r.generated, r.locked_blocks, r.anon, r.first_token_at,
            r.finished_at, r.scheduled_at, r.cached_tokens, r.recomputed_tokens,
            r.preemptions, tuple(tuple(x) for x in r.anon_since),
        )
        for r in made
    )
    kv = replica.kv
    return (
        calls,
        (kv.cached_blocks, kv.locked_blocks, kv.anonymous_blocks, kv.evicted_blocks,
         kv.inuse_blocks, kv.busy_block_seconds, kv.reused_idle_block_seconds),
        (replica.steps, replica.busy_seconds, replica.step_start, replica.step_end,
         replica._run_steps, [(r.workflow, q) for r, q in replica._batch]),
        (replica.context_tokens, replica.demand_tokens, replica.backlog_tokens),
    )


def serve(
    continuation: bool, calls: list[tuple[int, int, int]], capacity: int, seqs: int = 8
) -> tuple[list[tuple[object, ...]], int]:
    """Serve ``calls`` (prompt blocks, output tokens, arrival step) after a warm-up that
    leaves cached blocks to evict; the state after every plan, and how many plans the
    continuation formed."""
    replica = make_replica(capacity=capacity, budget=4096, seqs=seqs, hooks=Hooks())
    continued = 0
    if not continuation:
        replica._continue_run = lambda now: []  # type: ignore[method-assign]
    else:
        original = replica._continue_run

        def counting(now: float) -> list[tuple[Request, int]]:
            nonlocal continued
            batch = original(now)
            continued += bool(batch)
            return batch

        replica._continue_run = counting  # type: ignore[method-assign]
    made: list[Request] = []
    # warm-up: prompts that finish and stay cached, evictable
    for i in range(3):
        made.append(request(f"warm{i}", 6, 1, seq=i, extra_tokens=5))
        replica.enqueue(made[-1], 0.0)
    now = 0.0
    states: list[tuple[object, ...]] = []
    arrivals = sorted(calls, key=lambda c: c[2])
    seq = 10
    step = 0
    for _ in range(20_000):
        while arrivals and arrivals[0][2] <= step:
            blocks, output, _ = arrivals.pop(0)
            made.append(request(f"c{seq}", blocks, output, seq=seq))
            replica.enqueue(made[-1], now)
            seq += 1
        end = replica.plan(now)
        states.append(snapshot(replica, made))
        if end is None:
            if not arrivals:
                return states, continued
            step = arrivals[0][2]
            continue
        now = end
        replica.complete(now)
        step += 1
    raise AssertionError("the replica did not go idle")


@pytest.mark.pure_python
def test_a_run_cut_where_a_block_is_needed_continues_as_the_general_path_would() -> None:
    # two long decodes on a cache with no free block once they start: every block
    # boundary of either call ends a run, and the next plan evicts a cached block
    calls = [(5, 300, 0), (4, 260, 0)]
    general, none = serve(False, calls, capacity=30)
    continued, count = serve(True, calls, capacity=30)
    assert continued == general
    assert none == 0
    assert count > 0  # the continuation did form batches (not a vacuous comparison)


@pytest.mark.pure_python
@pytest.mark.parametrize("seed", range(6))
def test_random_loads_give_the_same_states_with_and_without_the_continuation(seed: int) -> None:
    rng = random.Random(seed)
    calls = [(rng.randint(1, 8), rng.randint(1, 400), rng.randint(0, 60)) for _ in range(8)]
    capacity, seqs = rng.randint(28, 60), rng.randint(2, 6)
    general, _ = serve(False, calls, capacity, seqs)
    continued, _ = serve(True, calls, capacity, seqs)
    assert continued == general


@pytest.mark.parametrize("seed", range(20))
def test_a_run_on_a_full_cache_stops_before_the_first_block_any_call_lacks(seed: int) -> None:
    """The closed form used when no block is free: the largest k whose new blocks number
    zero, which is what the bisection over _run_need finds."""
    rng = random.Random(seed)
    held = []
    for _ in range(rng.randint(1, 6)):
        blocks = rng.randint(1, 20)
        held.append((blocks * BT - rng.randint(1, BT), blocks))  # (tokens in KV, blocks)
    room = min(blocks * BT - computed for computed, blocks in held)
    assert _run_need(held, room, BT) == 0
    assert _run_need(held, room + 1, BT) > 0
