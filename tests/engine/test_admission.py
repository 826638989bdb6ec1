"""vLLM v1's admission, chunk caching and preemption rules, one exact test each.

The rules and their places in vLLM's source are in docs/engine.md ("Admission as vLLM
admits"). BT = 64-token blocks; block counts are chosen so that each test sits on the
boundary of the rule it checks.
"""

from __future__ import annotations

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.replica import Replica, Request
from saga.sched.decisions import Retention
from saga.sched.vllm import VLLMRoundRobin

BT = 64


class Hooks(VLLMRoundRobin):
    """vLLM's FCFS order with a chosen retention decision."""

    def __init__(self, decision: Retention | None = None) -> None:
        super().__init__()
        self.decision = decision or Retention("release")

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        return self.decision


class TenantFirst(Hooks):
    """Calls of workflows named b* go first, whenever they arrived."""

    static_order = False

    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        return (0.0 if request.workflow.startswith("b") else 1.0, request.seq)


def request(name: str, blocks: int, output: int, seq: int, extra_tokens: int = 0) -> Request:
    runs = (("w:" + name, 0, blocks),)
    return Request(name, "c0", runs, blocks * BT + extra_tokens, output, BT, seq)


def drive(replica: Replica, now: float = 0.0) -> tuple[float, list[Request]]:
    """Step the replica until idle; return the end time and calls in finish order."""
    done: list[Request] = []
    for _ in range(10_000):
        end = replica.plan(now)
        if end is None:
            return now, done
        now = end
        done.extend(replica.complete(now))
    raise AssertionError("replica did not go idle")


def make(capacity: int, budget: int, full_isl: bool = True, hooks: Hooks | None = None) -> Replica:
    config = EngineConfig(
        max_num_batched_tokens=budget, max_num_seqs=8, scheduler_reserve_full_isl=full_isl
    )
    return Replica(
        0, config, cost_model_for("llama-3.1-8b", "h100-sxm", 1), hooks or Hooks(),
        block_tokens=BT, capacity_blocks=capacity,
    )


def step(replica: Replica, now: float) -> float:
    end = replica.plan(now)
    assert end is not None
    replica.complete(end)
    return end


def decoding(
    replica: Replica, blocks: int, output: int, extra: int = 10
) -> tuple[Request, float]:
    """A running call that holds ``blocks`` keyed blocks plus one partial block of
    ``extra`` tokens and is decoding ``output`` tokens."""
    held = request("h", blocks, output, seq=0, extra_tokens=extra)
    available = replica.kv.available_blocks
    replica.enqueue(held, 0.0)
    now = 0.0
    while held.generated == 0:
        now = step(replica, now)
    assert held.generated == 1 and replica.kv.available_blocks == available - blocks - 1
    return held, now


# ---- the full-prompt admission check (scheduler_reserve_full_isl) ----------------------

def test_a_call_is_admitted_when_its_whole_prompt_fits_in_free_plus_evictable_blocks() -> None:
    replica = make(capacity=30, budget=2048)
    # 10 evictable blocks of a finished call, then a decode holding 7 of the 30
    replica.enqueue(request("old", 10, 1, seq=-1), 0.0)
    drive(replica)
    assert replica.kv.evictable_blocks == 10
    _, now = decoding(replica, 6, 300)
    assert replica.kv.available_blocks == 23 and replica.kv.free_blocks == 13
    exact = request("z", 23, 2, seq=1)
    replica.enqueue(exact, now)
    replica.plan(now)
    assert exact in replica.running  # 23 blocks: 13 free + 10 evicted


def test_a_call_one_block_over_waits_and_leaves_the_cache_untouched() -> None:
    replica = make(capacity=30, budget=256)  # its first chunk would fit
    _, now = decoding(replica, 6, 300)
    over = request("z", 23, 2, seq=1, extra_tokens=1)  # 24 blocks, 23 available
    replica.enqueue(over, now)
    replica.plan(now)
    assert replica.waiting == [over] and replica.blocked_on_memory
    assert over.lock is None and over.anon == 0 and replica.kv.locked_blocks == 6


def test_the_check_counts_an_evictable_prefix_hit_as_blocks_it_takes() -> None:
    # vLLM counts a hit's evictable blocks in the free-capacity check: locking them
    # takes them out of the free queue (single_type_kv_cache_manager.py)
    replica = make(capacity=30, budget=256)
    replica.enqueue(request("x", 5, 1, seq=-1), 0.0)
    drive(replica)
    held, now = decoding(replica, 6, 300)  # 23 available, x's 5 among them
    runs = (("w:x", 0, 5), ("w:z", 0, 19))  # 24 blocks, 5 of them hit
    fits = Request("z", "c0", (*runs[:1], ("w:z", 0, 18)), 23 * BT, 2, BT, seq=1)
    over = Request("z2", "c0", runs, 24 * BT, 2, BT, seq=2)
    replica.enqueue(over, now)
    replica.plan(now)
    assert replica.waiting == [over]  # 19 new + 5 hit > 23
    replica.withdraw(over)
    replica.interrupt(now)  # one decode step, not the whole run
    end = replica.step_end
    replica.complete(end)
    assert held in replica.running and replica.kv.available_blocks == 23
    replica.enqueue(fits, end)
    replica.plan(end)
    assert fits in replica.running and fits.cached_tokens == 5 * BT  # 18 new + 5 hit


def test_with_the_check_off_only_the_first_chunk_must_fit() -> None:
    replica = make(capacity=30, budget=256, full_isl=False)
    _, now = decoding(replica, 6, 300)
    big = request("z", 40, 2, seq=1)  # 40 blocks on a 30-block replica
    replica.enqueue(big, now)
    replica.plan(now)
    assert big in replica.running and big.anon == 4  # the first 255-token chunk


def test_a_long_prompt_cannot_loop_preempting_itself() -> None:
    # The loop of the issue: a prompt admitted on its first chunk runs out of blocks
    # mid-prefill, preempts itself (the last running call), is admitted again on its
    # first chunk a step later, and so on until the decode ahead of it finishes.
    def serve(full_isl: bool) -> tuple[Request, Request, Replica]:
        replica = make(capacity=12, budget=128, full_isl=full_isl)
        # 316 tokens (5 blocks) decoding 200 more: 6 blocks after 4 steps, 9 at the end
        held, now = decoding(replica, 4, 200, extra=60)
        long = request("long", 8, 2, seq=1)  # 8 blocks: never fits beside the decode
        replica.enqueue(long, now)
        drive(replica, now)
        return held, long, replica

    held, long, replica = serve(full_isl=True)
    assert long.preemptions == 0 and held.preemptions == 0
    assert long.recomputed_tokens == 0 and long.cached_tokens == 0
    assert long.scheduled_at >= held.finished_at  # it waited for the blocks
    replica.kv.check()

    # vLLM's check off: admitted on its first chunk, it computes 381 tokens, cannot
    # grow beside the decode's 6 blocks and preempts itself once. Its 5 computed blocks
    # stay cached, so its next first chunk (7 blocks counting the hit) does not fit and
    # it waits instead of looping (the engine model before this rule looped 61 times,
    # recomputing 31,232 tokens). The decode's growth evicts 2 of the 5 meanwhile.
    held, long, replica = serve(full_isl=False)
    assert long.preemptions == 1 and held.preemptions == 0
    assert long.recomputed_tokens == 381 - 3 * BT
    replica.kv.check()


# ---- chunk caching ------------------------------------------------------------------

def test_each_chunk_is_cached_as_it_is_computed_and_survives_preemption() -> None:
    replica = make(capacity=64, budget=128)
    call = request("a", 10, 2, seq=1, extra_tokens=30)  # 670 tokens, 128 per step
    replica.enqueue(call, 0.0)
    now = step(replica, 0.0)
    assert replica.kv.cached_blocks == 2 and call.locked_blocks == 2 and call.anon == 0
    now = step(replica, now)
    now = step(replica, now)  # 384 tokens computed: 6 full blocks
    assert replica.kv.cached_blocks == 6 and call.locked_blocks == 6
    replica._preempt(call, now)
    assert replica.kv.match_blocks(call.runs) == 6 and replica.kv.locked_blocks == 0
    replica.plan(now)
    assert call.computed == 6 * BT and call.recomputed_tokens == 0
    assert [q for _, q in replica._batch] == [128]
    now = replica.step_end
    replica.complete(now)
    drive(replica, now)
    assert replica.kv.match_blocks(call.runs) == 10
    replica.kv.check()


# ---- prefix hits are touched only on admission --------------------------------------

def test_a_call_that_is_not_admitted_does_not_refresh_its_hit_in_lru_order() -> None:
    replica = make(capacity=20, budget=2048)
    replica.enqueue(request("x", 5, 1, seq=-2), 0.0)  # released first: evicted first
    now, _ = drive(replica)
    replica.enqueue(request("y", 5, 1, seq=-1), now)
    now, _ = drive(replica, now)
    held = request("h", 6, 330, seq=0)  # will need 6 more blocks: 4 free, 2 evicted
    replica.enqueue(held, now)
    now = step(replica, now)
    z = Request("z", "c0", (("w:x", 0, 5), ("w:z", 0, 12)), 17 * BT, 2, BT, seq=1)
    replica.enqueue(z, now)
    drive(replica, now)
    # while z waited, its hit on x was not locked or re-stamped: x, the least recently
    # released, lost its 2 tail blocks, and z found 3 of its 5 when it was admitted
    assert z.preemptions == 0 and z.scheduled_at >= held.finished_at
    assert z.cached_tokens == 3 * BT
    replica.kv.check()


# ---- pins (a SAGA choice: vLLM has none) --------------------------------------------

def test_on_an_idle_replica_the_check_gives_up_pins_that_keep_the_prompt_out() -> None:
    hooks = Hooks(Retention("pin", ttl=60.0))
    replica = make(capacity=20, budget=2048, hooks=hooks)
    replica.enqueue(request("p", 8, 1, seq=-1), 0.0)
    now, _ = drive(replica)
    assert "p" in replica.pins and replica.kv.available_blocks == 12
    hooks.decision = Retention("release")
    z = request("z", 14, 2, seq=1)
    replica.enqueue(z, now)
    replica.plan(now)
    assert z in replica.running and "p" not in replica.pins


def test_beside_running_calls_the_check_waits_for_them_rather_than_unpin() -> None:
    hooks = Hooks(Retention("pin", ttl=60.0))
    replica = make(capacity=30, budget=2048, hooks=hooks)
    replica.enqueue(request("p", 8, 1, seq=-1), 0.0)
    now, _ = drive(replica)
    hooks.decision = Retention("release")
    held, now = decoding(replica, 6, 20)  # 7 blocks, done in 20 steps
    z = request("z", 16, 2, seq=1)  # 16 > 30 - 8 pinned - 7 running
    replica.enqueue(z, now)
    replica.plan(now)
    assert replica.waiting == [z] and "p" in replica.pins
    drive(replica, replica.step_end if replica.busy else now)
    assert z.scheduled_at >= held.finished_at and "p" in replica.pins


def test_where_pins_yield_to_waiting_calls_the_check_unpins_beside_running_calls() -> None:
    # SAGA's scheduler inside vLLM releases pins for any allocation they block
    # (saga.integrations.vllm_scheduler, _saga_allocate): the same state as above, admitted
    hooks = Hooks(Retention("pin", ttl=60.0))
    config = EngineConfig(max_num_batched_tokens=2048, max_num_seqs=8,
                          pins_yield_to_waiting=True)
    replica = Replica(0, config, cost_model_for("llama-3.1-8b", "h100-sxm", 1), hooks,
                      block_tokens=BT, capacity_blocks=30)
    replica.enqueue(request("p", 8, 1, seq=-1), 0.0)
    now, _ = drive(replica)
    hooks.decision = Retention("release")
    held, now = decoding(replica, 6, 20)
    z = request("z", 16, 2, seq=1)  # 16 > 30 - 8 pinned - 7 running; 16 <= 30 - 7
    replica.enqueue(z, now)
    replica.plan(now)
    assert z in replica.running and held in replica.running and "p" not in replica.pins
    replica.kv.check()


def test_the_check_keeps_the_calls_own_pin_which_its_hit_consumes() -> None:
    hooks = Hooks(Retention("pin", ttl=60.0))
    replica = make(capacity=20, budget=2048, hooks=hooks)
    replica.enqueue(request("p", 8, 1, seq=-1), 0.0)
    now, _ = drive(replica)
    hooks.decision = Retention("release")
    nxt = Request("p", "c1", (("w:p", 0, 20),), 20 * BT, 2, BT, seq=1)
    replica.enqueue(nxt, now)
    replica.plan(now)
    assert nxt in replica.running and nxt.cached_tokens == 8 * BT  # 12 new + 8 pinned


# ---- preemption -------------------------------------------------------------------

def test_preemption_takes_the_running_call_last_in_priority_order() -> None:
    # vLLM's priority policy preempts max((priority, arrival)) (scheduler.py), not the
    # one admitted last: here b is admitted after a but goes first
    replica = make(capacity=14, budget=2048, hooks=TenantFirst())
    a = request("a", 4, 4 * BT, seq=1)
    replica.enqueue(a, 0.0)
    now = step(replica, 0.0)
    b = request("b", 4, 4 * BT, seq=2)
    replica.enqueue(b, now)
    _, done = drive(replica, now)
    assert [r.workflow for r in done] == ["b", "a"]
    assert a.preemptions >= 1 and b.preemptions == 0
    replica.kv.check()
