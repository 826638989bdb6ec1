"""Folded block boundaries (``Replica.fold_boundaries``, ``saga.engine.fold``): a
memory-bound decode run's boundaries become one event, and a read at any instant, after
``Replica.sync``, sees exactly the state stepping one run at a time leaves there."""

from __future__ import annotations

import math
import random

import pytest
from tests.engine.test_replica import Hooks, make_replica, request
from tests.engine.test_run_continuation import snapshot

from saga.engine.costmodel import CostModel
from saga.engine.driver import ReplicaDriver
from saga.engine.events import EventLoop
from saga.engine.kvcache import KeyedEviction, RadixKV
from saga.engine.replica import Replica, Request


class Driver(ReplicaDriver):
    """Steps one replica; records the finished calls with their instants."""

    def __init__(self, loop: EventLoop, replica: Replica) -> None:
        super().__init__(loop, 1)
        self.replica = replica
        self.done: list[tuple[str, float]] = []

    def _call_done(self, replica: Replica, request: Request) -> None:
        self.done.append((request.workflow, self.loop.now))


class WobblingHooks(Hooks):
    """A dynamic queue order whose keys change with the instant they are asked at."""

    static_order = False

    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        return (math.sin(request.seq * 2.3 + now * 5.0), request.seq)


def serial_cost(replica: Replica) -> CostModel:
    """``replica``'s cost model with compute and memory added (``step_roofline = "sum"``,
    a CPU core's step): the closed forms the folds add up must hold for it too."""
    cost = replica.cost
    return CostModel(cost.model, cost.gpu, cost.tp,
                     cost.efficiency.model_copy(update={"step_roofline": "sum"}))


def serve(
    fold: bool, seed: int, keyed: bool = False, under_hooks: bool = False,
    serial: bool = False,
) -> tuple[list[tuple[float, tuple[object, ...]]], list[tuple[str, float]], int, int]:
    """Serve a seeded random load on a small full cache, reading the replica at seeded
    random instants; the states read (with their instants), the finished calls, the
    events run and the boundaries sync applied mid-fold. ``under_hooks``: the runtime
    also syncs before every hook (``Replica.fold_under_hooks``); here the keys of the
    eviction and queue orders change with the instant alone, so a key asked at any
    instant but its boundary's would show. ``serial``: the step model adds compute and
    memory (:func:`serial_cost`)."""
    rng = random.Random(seed)
    replica = make_replica(capacity=rng.randint(28, 60), budget=4096,
                           seqs=rng.randint(2, 6),
                           hooks=WobblingHooks() if under_hooks else Hooks())
    if serial:
        replica.cost = serial_cost(replica)
    if under_hooks:
        replica.kv = RadixKV(replica.kv.capacity, KeyedEviction(
            "wobble", lambda n, now: math.sin(n.stamp * 1.7 + now * 3.0)))
    elif keyed:  # LRU again, but as a policy's key function
        replica.kv = RadixKV(replica.kv.capacity, KeyedEviction("stamp", lambda n, now: n.stamp))
    replica.fold_boundaries = fold
    replica.fold_under_hooks = under_hooks
    loop = EventLoop()
    driver = Driver(loop, replica)
    made: list[Request] = []
    # warm-up: prompts that finish and stay cached, evictable (so boundaries evict)
    for i in range(3):
        made.append(request(f"warm{i}", 6, 1, seq=i, extra_tokens=5))
        replica.enqueue(made[-1], 0.0)
    driver._kick(replica)

    def arrive(item: tuple[int, int, int]) -> None:
        blocks, output, seq = item
        made.append(request(f"c{seq}", blocks, output, seq=seq))
        replica.enqueue(made[-1], loop.now)
        driver._kick(replica)

    reads: list[tuple[float, tuple[object, ...]]] = []
    applied = 0

    def read(_: object) -> None:
        nonlocal applied
        pending = len(replica._folded)
        replica.sync(loop.now)
        applied += pending - len(replica._folded)
        reads.append((loop.now, snapshot(replica, made)))

    for seq in range(10, 18):
        arrival = rng.uniform(0.0, 3.0)
        loop.at(arrival, arrive, (rng.randint(1, 8), rng.randint(1, 400), seq))
    for _ in range(60):
        loop.at(rng.uniform(0.0, 12.0), read)
    loop.run()
    assert replica.is_idle()
    return reads, driver.done, loop.events_run, applied


@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_a_read_at_any_instant_sees_the_state_stepping_leaves(seed: int, serial: bool) -> None:
    eager_reads, eager_done, eager_events, _ = serve(False, seed, serial=serial)
    lazy_reads, lazy_done, lazy_events, _ = serve(True, seed, serial=serial)
    assert lazy_reads == eager_reads
    assert lazy_done == eager_done
    assert lazy_events <= eager_events


@pytest.mark.parametrize("serial", [False, True])
def test_folding_removes_events_and_reads_apply_boundaries_mid_fold(serial: bool) -> None:
    """Over the seeds above, folds happen and reads land inside them (the comparison
    is not vacuous)."""
    saved = applied = 0
    for seed in range(12):
        _, _, eager_events, _ = serve(False, seed, serial=serial)
        _, _, lazy_events, synced = serve(True, seed, serial=serial)
        saved += eager_events - lazy_events
        applied += synced
    assert saved > 0
    assert applied > 0


@pytest.mark.parametrize("seed", range(4))
def test_a_keyed_eviction_order_folds_nothing(seed: int) -> None:
    """A keyed eviction reads the policy's state, which other events change meanwhile:
    its boundaries stay events."""
    eager_reads, _, eager_events, _ = serve(False, seed, keyed=True)
    lazy_reads, _, lazy_events, applied = serve(True, seed, keyed=True)
    assert (lazy_reads, lazy_events, applied) == (eager_reads, eager_events, 0)



def test_keyed_and_dynamic_orders_fold_under_hooks_and_ask_keys_at_each_boundary() -> None:
    """Under ``fold_under_hooks`` a keyed eviction order and a dynamic queue order fold,
    and a read at any instant sees what stepping leaves (each call's progress, the
    cache, the batch in the order its keys give at the last boundary); folds of several
    calls happen and reads land inside them."""
    saved = applied = 0
    for seed in range(12):
        eager_reads, eager_done, eager_events, _ = serve(False, seed, under_hooks=True)
        lazy_reads, lazy_done, lazy_events, synced = serve(True, seed, under_hooks=True)
        assert lazy_reads == eager_reads
        assert lazy_done == eager_done
        saved += eager_events - lazy_events
        applied += synced
    assert saved > 0
    assert applied > 0
