"""Folded mixed steps (``saga.engine.mixed_fold``): under the decode guard, the steps in
which one prompt advances a capped chunk beside the same decodes become one event, and a
read at any instant, after ``Replica.sync``, sees exactly the state stepping one step at a
time leaves there (each call's progress, holdings and block ages, the cache, the counters,
the batch and both queues in their order), with calls waiting too."""

from __future__ import annotations

import math
import random

import pytest
from tests.engine.test_fold import Driver, serial_cost
from tests.engine.test_replica import Hooks, make_replica, request
from tests.engine.test_run_continuation import snapshot

from saga.engine.events import EventLoop
from saga.engine.kvcache import KeyedEviction, RadixKV
from saga.engine.replica import Replica, Request
from saga.sched.saga.chunking import decode_guard


class GuardHooks(Hooks):
    """FCFS with the decode guard: 32 prompt tokens a step while two calls decode."""

    def prefill_limit(self, replica: Replica, now: float) -> int | None:
        return decode_guard(replica.running, 32, 2)


class WobblingGuardHooks(GuardHooks):
    """The guard under a dynamic queue order whose keys change with the instant."""

    static_order = False

    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        return (math.sin(request.seq * 2.3 + now * 5.0), request.seq)


def serve(
    fold: bool, seed: int, under_hooks: bool = False, ordered: bool = True,
    loose: list[bool] | None = None, serial: bool = False,
) -> tuple[list[tuple[float, object]], list[tuple[str, float]], int, int, int, int]:
    """Serve a seeded random load of long prompts and long outputs on a small cache,
    reading the replica at seeded random instants; the states read (with their instants),
    the finished calls, the events run, the folded steps planned (and planned while
    calls waited) and those a read applied mid-fold. ``under_hooks``: a keyed eviction
    order and a dynamic queue order whose keys change with the instant alone (the
    runtime's barrier is the reads here: nothing else asks the policy). ``ordered``
    False: the reads sync as the barrier does (``Replica.sync(now, ordered=False)``), and
    ``loose`` gets, per read, whether it landed before the start of the last step (or run)
    of the fold planned last (that sync keeps the queues' order only for that step).
    ``serial``: the step model adds compute and memory (``test_fold.serial_cost``)."""
    rng = random.Random(seed)
    hooks = WobblingGuardHooks() if under_hooks else GuardHooks()
    replica = make_replica(capacity=rng.randint(60, 140), budget=rng.choice([128, 256]),
                           seqs=rng.randint(3, 6), hooks=hooks)
    if serial:
        replica.cost = serial_cost(replica)
    if under_hooks:
        replica.kv = RadixKV(replica.kv.capacity, KeyedEviction(
            "wobble", lambda n, now: math.sin(n.stamp * 1.7 + now * 3.0)))
    replica.fold_boundaries = fold
    replica.fold_under_hooks = under_hooks
    loop = EventLoop()
    driver = Driver(loop, replica)
    made: list[Request] = []
    for i in range(3):  # cached, evictable prompts: the chunks and decodes below evict them
        made.append(request(f"warm{i}", 8, 1, seq=i, extra_tokens=5))
        replica.enqueue(made[-1], 0.0)
    driver._kick(replica)

    def arrive(item: tuple[int, int, int]) -> None:
        blocks, output, seq = item
        made.append(request(f"c{seq}", blocks, output, seq=seq))
        replica.enqueue(made[-1], loop.now)
        driver._kick(replica)

    reads: list[tuple[float, object]] = []
    planned = planned_waiting = applied = 0
    last_start = -math.inf  # where the last step of the fold planned last starts
    plan = replica.plan

    def counting_plan(now: float) -> float | None:
        nonlocal planned, planned_waiting, last_start
        end = plan(now)
        folds = replica._mixed or replica._folded
        last_start = -math.inf if not folds else (
            folds[-2][0] if len(folds) > 1 else replica.step_end)
        planned += len(replica._mixed)
        if replica.waiting:
            planned_waiting += len(replica._mixed)
        return end

    replica.plan = counting_plan  # type: ignore[method-assign]

    def read(_: object) -> None:
        nonlocal applied
        pending = len(replica._mixed)
        replica.sync(loop.now, ordered)
        applied += pending - len(replica._mixed)
        queues = ([r.workflow for r in replica.running], [r.workflow for r in replica.waiting])
        if loose is not None:
            loose.append(loop.now < last_start)
        reads.append((loop.now, (snapshot(replica, made), queues)))

    for seq in range(10, 20):
        arrival = rng.uniform(0.0, 4.0)
        loop.at(arrival, arrive, (rng.randint(2, 30), rng.randint(20, 500), seq))
    for _ in range(80):
        loop.at(rng.uniform(0.0, 15.0), read)
    loop.run()
    assert replica.is_idle()
    return reads, driver.done, loop.events_run, planned, planned_waiting, applied


@pytest.mark.pure_python
@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("under_hooks", [False, True])
@pytest.mark.parametrize("seed", range(10))
def test_a_read_at_any_instant_sees_the_state_stepping_leaves(
    seed: int, under_hooks: bool, serial: bool
) -> None:
    stepped_reads, stepped_done, stepped_events, planned, _, _ = serve(
        False, seed, under_hooks, serial=serial)
    folded_reads, folded_done, folded_events, _, _, _ = serve(
        True, seed, under_hooks, serial=serial)
    assert planned == 0
    assert folded_reads == stepped_reads
    assert folded_done == stepped_done
    assert folded_events <= stepped_events


@pytest.mark.pure_python
@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("under_hooks", [False, True])
def test_mixed_steps_fold_and_reads_apply_them_mid_fold(under_hooks: bool, serial: bool) -> None:
    """Over the seeds above, mixed steps fold (fewer events), also while calls wait, and
    reads land inside folds (the comparison is not vacuous)."""
    saved = planned = planned_waiting = applied = 0
    for seed in range(10):
        _, _, stepped_events, _, _, _ = serve(False, seed, under_hooks, serial=serial)
        _, _, folded_events, folds, folds_waiting, synced = serve(
            True, seed, under_hooks, serial=serial)
        saved += stepped_events - folded_events
        planned += folds
        planned_waiting += folds_waiting
        applied += synced
    assert saved > 0
    assert planned > planned_waiting > 0
    assert applied > 0


def _unordered(read: tuple[float, object]) -> tuple[float, object]:
    """A read with the queues and the batch in no order (sorted)."""
    now, (state, queues) = read  # type: ignore[misc]
    calls, kv, (steps, busy, start, end, run, batch), sums, *_ = state
    return now, ((calls, kv, (steps, busy, start, end, run, sorted(batch)), sums),
                 tuple(sorted(q) for q in queues))


@pytest.mark.pure_python
def test_an_unordered_sync_keeps_the_order_the_engine_reads() -> None:
    """The barrier's syncs (``ordered`` False) sort the queues only for a fold's last step:
    over the seeds above, a read inside that step (or outside folds) sees the batch and
    queues in stepping's order, every other read the same calls, holdings and counters,
    and the calls finish at the same instants in the same order. Sorting never under
    ``ordered`` False fails it (reads in a fold's last step see a stale order)."""
    applied = loose_reads = strict_reads = 0
    for seed in range(10):
        stepped_reads, stepped_done, _, _, _, _ = serve(False, seed, True)
        loose: list[bool] = []
        folded_reads, folded_done, _, _, _, synced = serve(True, seed, True, False, loose)
        assert folded_done == stepped_done
        for stepped, folded, free in zip(stepped_reads, folded_reads, loose, strict=True):
            if free:
                assert _unordered(folded) == _unordered(stepped)
            else:
                assert folded == stepped
        applied += synced
        loose_reads += sum(loose)
        strict_reads += len(loose) - sum(loose)
    assert applied > 0 and loose_reads > 0 and strict_reads > 0
