"""Useful KV utilization: blocks held while recomputing KV lost to preemption are waste;
and the busy share of a replica within the arrival window."""

from __future__ import annotations

import math

import pytest
from tests.engine.test_replica import BT, drive, make_replica, request

from saga.engine.replica import Replica, Request
from saga.metrics.summary import busy_share, kv_useful_utilization, kv_utilization
from saga.sim.simulator import ReplicaRecord, SimResult


def held(replica: Replica, r: Request) -> int:
    return r.locked_blocks + r.anon


def step(replica: Replica, now: float) -> float:
    end = replica.plan(now)
    assert end is not None
    replica.complete(end)
    return end


def test_a_call_without_preemption_wastes_nothing() -> None:
    replica = make_replica(capacity=64, budget=512)
    replica.enqueue(request("a", 10, 40, seq=1), 0.0)
    drive(replica)
    assert replica.kv.busy_block_seconds > 0
    assert replica.kv.recompute_block_seconds == 0.0
    assert replica.kv.discarded_block_seconds == 0.0
    assert replica.kv.recompute_blocks == 0


def test_blocks_a_preemption_discards_were_held_for_nothing() -> None:
    replica = make_replica(capacity=64, budget=512)
    replica.decode_runs = False
    a = request("a", 8, 200, seq=1)
    replica.enqueue(a, 0.0)
    end1 = step(replica, 0.0)  # prefill: 8 blocks outside the cache, then cached
    assert (a.locked_blocks, a.anon) == (8, 0)
    now = end1
    for _ in range(3):
        now = step(replica, now)  # decode: the output's block is outside the cache
    assert a.anon == 1
    replica._preempt(a, now)
    # the prompt's 8 blocks went into the cache at end1 and stay there (a hit may serve
    # them again); the output's block, held since end1, is lost
    assert replica.kv.discarded_block_seconds == pytest.approx(now - end1, rel=1e-12)
    assert replica.kv.recompute_block_seconds == 0.0
    assert a.anon_since == []


def test_a_prompt_preempted_mid_prefill_keeps_its_computed_chunk() -> None:
    replica = make_replica(capacity=64, budget=256)
    a = request("a", 8, 20, seq=1)  # 512 prompt tokens in two chunks of 256 (4 blocks)
    replica.enqueue(a, 0.0)
    end1 = step(replica, 0.0)
    # vLLM caches a chunk's full blocks as they are computed: the first chunk is cached
    assert (a.locked_blocks, a.anon) == (4, 0)
    end2 = replica.plan(end1)  # the second chunk takes 4 more blocks at end1
    assert end2 is not None and a.anon == 4
    cut = (end1 + end2) / 2
    replica._preempt(a, cut)  # while the second chunk runs
    # the cached chunk stays (a hit may serve it again); the second chunk's blocks, held
    # since end1, served KV that is lost
    assert replica.kv.discarded_block_seconds == pytest.approx(4 * (cut - end1), rel=1e-12)


def test_blocks_held_while_recomputing_evicted_kv_are_waste() -> None:
    replica = make_replica(capacity=64, budget=512)
    replica.decode_runs = False
    a = request("a", 8, 40, seq=1)  # 512 prompt tokens: one step of prefill
    replica.enqueue(a, 0.0)
    now = step(replica, 0.0)  # prefill; the prompt's 8 blocks are cached
    for _ in range(3):
        now = step(replica, now)  # decode steps
    assert a.generated == 4
    # preempted, and everything it had cached is evicted: it must compute it all again
    replica._preempt(a, now)
    replica.kv.evict(replica.kv.used_blocks, now)
    assert replica.kv.recompute_block_seconds == 0.0
    # re-admission: 512 + generated tokens to recompute, 512 a step: two steps
    waste = 0.0
    start = now
    end = replica.plan(start)
    assert end is not None and a.recompute_base == 0
    first = held(replica, a)
    assert first == 8  # the first chunk: 512 tokens
    replica.complete(end)
    waste += first * (end - start)
    start = end
    end = replica.plan(start)
    assert end is not None
    second = held(replica, a)
    assert second == 8 + math.ceil((a.generated + 1) / BT)  # the rest, with the next token
    replica.complete(end)
    waste += second * (end - start)
    # the second step completed the recomputation: from here the blocks serve decoding
    assert a.recompute_base == -1 and replica.kv.recompute_blocks == 0
    assert replica.kv.recompute_block_seconds == pytest.approx(waste, rel=1e-12)
    drive(replica, end)
    assert replica.kv.recompute_block_seconds == pytest.approx(waste, rel=1e-12)
    # the KV it had when preempted: the prompt and 3 of its 4 tokens (the last had none yet)
    assert a.recomputed_tokens == 8 * BT + 3


def test_a_recomputing_call_preempted_again_stops_counting() -> None:
    replica = make_replica(capacity=64, budget=256)
    replica.decode_runs = False
    a = request("a", 8, 40, seq=1)
    replica.enqueue(a, 0.0)
    now = step(replica, 0.0)
    now = step(replica, now)  # prefill in two chunks of 256 tokens
    now = step(replica, now)  # a decode step
    replica._preempt(a, now)
    replica.kv.evict(replica.kv.used_blocks, now)
    end = step(replica, now)  # first chunk of the recomputation (256 tokens: 4 blocks)
    assert replica.kv.recompute_blocks == 4
    discarded = replica.kv.discarded_block_seconds
    replica._preempt(a, end)
    assert replica.kv.recompute_blocks == 0 and a.recompute_base == -1
    assert replica.kv.recompute_block_seconds == pytest.approx(4 * (end - now), rel=1e-12)
    # its blocks were waste as recomputation already: the preemption adds nothing
    assert replica.kv.discarded_block_seconds == discarded


def test_a_next_call_recomputing_its_evicted_prefix_wastes_only_that_prefix() -> None:
    replica = make_replica(capacity=64, budget=512)
    # the workflow's earlier calls had computed 10 blocks; they were evicted
    call = Request("a", "c1", (("w:a", 0, 12),), 12 * BT, 4, BT, seq=1)
    call.reusable_blocks = 10
    replica.enqueue(call, 0.0)
    end1 = step(replica, 0.0)  # 512 tokens: 8 blocks, all of the lost prefix
    assert replica.kv.recompute_blocks == 8
    end2 = replica.plan(end1)
    assert end2 is not None
    assert held(replica, call) == 12  # the whole prompt
    assert replica.kv.recompute_blocks == 10  # only the 10 computed before are waste
    replica.complete(end2)  # the prefix is back: no more waste
    assert replica.kv.recompute_blocks == 0 and call.recompute_base == -1
    waste = 8 * end1 + 10 * (end2 - end1)
    assert replica.kv.recompute_block_seconds == pytest.approx(waste, rel=1e-12)
    drive(replica, end2)
    assert replica.kv.recompute_block_seconds == pytest.approx(waste, rel=1e-12)


def test_a_next_call_that_finds_its_prefix_cached_wastes_nothing() -> None:
    replica = make_replica(capacity=64, budget=512)
    first = request("a", 10, 2, seq=1)
    replica.enqueue(first, 0.0)
    end, _ = drive(replica)
    again = Request("a", "c1", (("w:a", 0, 12),), 12 * BT, 2, BT, seq=2)
    again.reusable_blocks = 10
    replica.enqueue(again, end)
    drive(replica, end)
    assert again.cached_tokens == 10 * BT
    assert replica.kv.recompute_block_seconds == 0.0


def record(capacity: int, busy: float, reused: float, wasted: float, window: float,
           ) -> ReplicaRecord:
    return ReplicaRecord(0, capacity, busy, reused, 0.0, 0, 0, 0, 0, 0, 0, wasted, window)


def result(*replicas: ReplicaRecord, window: tuple[float, float] = (0.0, 0.0)) -> SimResult:
    return SimResult("p", "c", 0, [], [], list(replicas), 0.0, 10.0, 0,
                     arrival_window=window)


def test_useful_utilization_takes_recomputing_blocks_out_of_the_busy_ones() -> None:
    # 2 replicas x 100 blocks x 10 s = 2000 block-seconds of capacity
    run = result(record(100, 500.0, 100.0, 200.0, 0.0), record(100, 300.0, 0.0, 0.0, 0.0))
    assert kv_utilization(run) == pytest.approx(900 / 2000)
    assert kv_useful_utilization(run) == pytest.approx(700 / 2000)


def test_busy_share_is_stepping_time_over_replica_time_in_the_arrival_window() -> None:
    run = result(record(1, 0, 0, 0, 3.0), record(1, 0, 0, 0, 1.0), window=(2.0, 6.0))
    assert busy_share(run) == pytest.approx(4.0 / 8.0)
    assert math.isnan(busy_share(result(record(1, 0, 0, 0, 0.0))))  # closed loop


def test_the_replica_counts_only_stepping_time_inside_its_window() -> None:
    replica = make_replica(capacity=64, budget=512)
    replica.enqueue(request("a", 8, 40, seq=1), 0.0)
    prefill_end = replica.plan(0.0)
    assert prefill_end is not None
    replica.busy_window = (prefill_end / 2, 1e9)
    replica.complete(prefill_end)
    assert replica.window_busy_seconds == pytest.approx(prefill_end / 2, rel=1e-12)
    end, _ = drive(replica, prefill_end)
    assert replica.window_busy_seconds == pytest.approx(end - prefill_end / 2, rel=1e-12)
    assert replica.busy_seconds == pytest.approx(end, rel=1e-12)
