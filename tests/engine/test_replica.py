"""Exact-state tests of the batcher: chunked prefill, decode, preemption, retention."""

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


def make_replica(
    capacity: int = 256, budget: int = 512, seqs: int = 8, hooks: Hooks | None = None,
    host_blocks: int = 0,
) -> Replica:
    config = EngineConfig(max_num_batched_tokens=budget, max_num_seqs=seqs)
    return Replica(
        0, config, cost_model_for("llama-3.1-8b", "h100-sxm", 1), hooks or Hooks(),
        block_tokens=BT, capacity_blocks=capacity, host_capacity_blocks=host_blocks,
    )


def request(name: str, blocks: int, output: int, seq: int, extra_tokens: int = 0) -> Request:
    runs = (("w:" + name, 0, blocks),)
    return Request(name, "c0", runs, blocks * BT + extra_tokens, output, BT, seq)


def drive(replica: Replica, now: float = 0.0, limit: int = 10_000) -> tuple[float, list[Request]]:
    """Step the replica until idle; return the end time and calls in finish order."""
    done: list[Request] = []
    for _ in range(limit):
        end = replica.plan(now)
        if end is None:
            return now, done
        now = end
        done.extend(replica.complete(now))
    raise AssertionError("replica did not go idle")


def test_chunked_prefill_respects_the_token_budget_in_fcfs_order() -> None:
    replica = make_replica(budget=512)
    a = request("a", 10, 3, seq=1)  # 640 prompt tokens
    b = request("b", 4, 3, seq=2)  # 256 prompt tokens
    replica.enqueue(a, 0.0)
    replica.enqueue(b, 0.0)
    replica.plan(0.0)
    # step 1: a takes the whole budget (512 of 640), b waits for budget
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 512)]
    replica.complete(replica.step_end)
    replica.plan(replica.step_end)
    # step 2: a finishes its prefill (128) and b starts (256): 384 tokens
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 128), ("b", 256)]
    replica.complete(replica.step_end)
    assert a.generated == 1 and b.generated == 1
    assert a.first_token_at == b.first_token_at > 0


def test_a_cached_prefix_is_not_computed_again() -> None:
    replica = make_replica()
    first = request("a", 10, 2, seq=1)
    replica.enqueue(first, 0.0)
    end, _ = drive(replica)
    again = Request("a", "c1", (("w:a", 0, 12),), 12 * BT, 2, BT, seq=2)
    replica.enqueue(again, end)
    replica.plan(end)
    # prompt (10 blocks) and output (2 tokens: no full block) were cached: 10 blocks hit
    assert again.cached_tokens == 10 * BT
    assert [(r.call_id, q) for r, q in replica._batch] == [("c1", 2 * BT)]


def test_decode_runs_are_one_event_and_match_single_steps() -> None:
    def finish_times(decode_runs: bool) -> tuple[list[float], int]:
        replica = make_replica()
        replica.decode_runs = decode_runs
        for i, out in enumerate([40, 90, 200]):
            replica.enqueue(request(f"w{i}", 8, out, seq=i), 0.0)
        _, done = drive(replica)
        return [r.finished_at for r in done], replica.steps

    stepped, steps_single = finish_times(False)
    ran, steps_runs = finish_times(True)
    assert steps_single == steps_runs
    assert len(ran) == len(stepped) == 3
    for x, y in zip(ran, stepped, strict=True):
        assert abs(x - y) < 1e-9 * max(1.0, y)


def test_the_step_that_ends_a_prompt_is_not_folded_into_a_decode_run() -> None:
    """A chunk that stops one token short of the prompt leaves a batch that looks like
    a decode (one token to compute), but that step also emits the first token and
    completes the prompt's last block: a run would time the first token at its end and
    never cache the block (the next call of the workflow then hits one block less)."""

    def serve(decode_runs: bool) -> tuple[float, float, int]:
        replica = make_replica(budget=10 * BT - 1)
        replica.decode_runs = decode_runs
        first = request("a", 10, 5, seq=1)  # 640 prompt tokens, a chunk of 639
        replica.enqueue(first, 0.0)
        end = replica.plan(0.0)
        assert end is not None
        replica.complete(end)
        assert (first.computed, first.generated) == (10 * BT - 1, 0)
        step_end = end + replica._step_time([(first, 1)])
        end, _ = drive(replica, end)
        again = Request("a", "c1", (("w:a", 0, 12),), 12 * BT, 2, BT, seq=2)
        replica.enqueue(again, end)
        replica.plan(end)
        return first.first_token_at - step_end, first.finished_at, again.cached_tokens

    ran, stepped = serve(True), serve(False)
    assert ran[2] == stepped[2] == 10 * BT
    assert ran[0] == stepped[0] == 0.0
    assert abs(ran[1] - stepped[1]) < 1e-9 * stepped[1]


def test_a_decode_run_does_not_evict_what_a_call_admitted_at_its_cut_would_hit() -> None:
    """A run takes only free blocks: had it evicted at its start for steps it did not
    take, a call admitted where it is cut would miss the evicted prefix."""

    def cut_and_admit(decode_runs: bool) -> tuple[int, int]:
        replica = make_replica(capacity=12)
        replica.decode_runs = decode_runs
        replica.enqueue(request("b", 4, 1, seq=1, extra_tokens=10), 0.0)
        now, _ = drive(replica)  # b's 4 prompt blocks stay cached, evictable
        a = request("a", 6, 200, seq=2)  # 6 blocks, then 3 more over 200 tokens
        replica.enqueue(a, now)
        end = replica.plan(now)
        assert end is not None
        replica.complete(end)  # prefill: a holds 7 blocks, 1 is free
        now = end
        four, five = (replica.cost.decode_steps_time(1, a.computed, k) for k in (4, 5))
        cut = now + (four + five) / 2  # within the fifth decode step
        while now < cut:
            end = replica.plan(now)
            assert end is not None
            end = replica.interrupt(cut) or end
            replica.complete(end)
            now = end
        again = request("b", 4, 1, seq=3, extra_tokens=10)
        replica.enqueue(again, now)
        replica.plan(now)
        return again.cached_tokens, a.generated

    assert cut_and_admit(True) == cut_and_admit(False) == (4 * BT, 6)


def test_interrupting_a_run_ends_it_at_the_next_step_boundary() -> None:
    replica = make_replica()
    replica.enqueue(request("a", 8, 500, seq=1), 0.0)
    end = replica.plan(0.0)
    assert end is not None
    replica.complete(end)  # prefill step
    start = end
    run_end = replica.plan(start)
    assert run_end is not None and replica._run_steps > 1
    step = replica.cost.decode_steps_time(1, replica._batch[0][0].computed, 1)
    cut = replica.interrupt(start + 2.5 * step)
    assert cut is not None
    assert replica._run_steps == 3
    assert abs(cut - (start + replica.cost.decode_steps_time(1, 8 * BT, 3))) < 1e-12


def test_preemption_takes_the_last_running_call_and_recomputes_it() -> None:
    # 20 blocks of KV; two calls of 8 blocks that each grow by 4 blocks of output
    replica = make_replica(capacity=20, budget=2048)
    a = request("a", 8, 4 * BT, seq=1)
    b = request("b", 8, 4 * BT, seq=2)
    replica.enqueue(a, 0.0)
    replica.enqueue(b, 0.0)
    _, done = drive(replica)
    assert [r.workflow for r in done] == ["a", "b"]
    assert b.preemptions >= 1 and a.preemptions == 0
    assert b.recomputed_tokens > 0
    assert replica.kv.locked_blocks == 0 and replica.kv.anonymous_blocks == 0
    replica.kv.check()


def test_pin_keeps_kv_until_the_next_call_and_unpin_releases_it() -> None:
    replica = make_replica(hooks=Hooks(Retention("pin", ttl=30.0)))
    replica.enqueue(request("a", 10, 2, seq=1), 0.0)
    end, _ = drive(replica)
    assert "a" in replica.pins and replica.kv.locked_blocks == 10
    assert replica.kv.evictable_blocks == 0
    nxt = Request("a", "c1", (("w:a", 0, 12),), 12 * BT, 2, BT, seq=2)
    replica.enqueue(nxt, end + 5)
    replica.plan(end + 5)
    assert "a" not in replica.pins  # the pin is consumed by the hit
    assert nxt.cached_tokens == 10 * BT


def test_drop_frees_the_workflow_blocks_at_once() -> None:
    replica = make_replica(hooks=Hooks(Retention("drop")))
    replica.enqueue(request("a", 10, 2, seq=1), 0.0)
    drive(replica)
    assert replica.kv.cached_blocks == 0


def test_offload_copies_to_host_and_a_later_call_loads_from_there() -> None:
    replica = make_replica(capacity=24, hooks=Hooks(Retention("offload")), host_blocks=100)
    replica.enqueue(request("a", 10, 2, seq=1), 0.0)
    end, _ = drive(replica)
    assert replica.host is not None and replica.host.cached_blocks == 10
    # another workflow needs 21 of the 24 blocks: 7 of a's 10 are evicted, tail first
    replica.enqueue(request("b", 20, 2, seq=2), end)
    end, _ = drive(replica, end)
    assert replica.kv.match_blocks((("w:a", 0, 10),)) == 3
    nxt = Request("a", "c1", (("w:a", 0, 10),), 10 * BT + 5, 2, BT, seq=3)
    replica.enqueue(nxt, end)
    drive(replica, end)
    assert nxt.cached_tokens == 3 * BT and nxt.host_tokens == 7 * BT
    assert nxt.first_token_at > end + replica.cost.host_transfer_time(7 * replica.block_bytes)


def test_pins_are_not_lost_when_giving_them_up_would_not_help() -> None:
    # reported by the baselines work: a failed allocation used to unpin everything
    replica = make_replica(capacity=100, hooks=Hooks(Retention("pin", ttl=60.0)))
    replica.enqueue(request("pinned", 30, 2, seq=1), 0.0)
    end, _ = drive(replica)
    assert "pinned" in replica.pins
    replica.hooks = Hooks()  # later calls release
    replica.enqueue(request("big", 60, 1000, seq=2), end)
    end = replica.plan(end) or end
    replica.complete(end)
    replica.enqueue(request("huge", 80, 2, seq=3), end)
    replica.plan(end)
    assert [r.workflow for r in replica.waiting] == ["huge"]
    assert "pinned" in replica.pins
    assert replica.kv.locked_blocks >= 30
    replica.kv.check()


def test_pressure_gives_up_pins_in_the_policy_order() -> None:
    class LatestFirst(Hooks):
        def unpin_order(self, replica: Replica, now: float) -> list[str]:
            return sorted(replica.pins, key=lambda w: -replica.pins[w].expires)

    hooks = LatestFirst(Retention("pin", ttl=60.0))
    replica = make_replica(capacity=40, budget=4096, hooks=hooks)
    replica.enqueue(request("early", 15, 2, seq=1), 0.0)
    end, _ = drive(replica)
    replica.enqueue(request("late", 15, 2, seq=2), end + 1)
    end, _ = drive(replica, end + 1)
    assert replica.kv.locked_blocks == 30
    hooks.decision = Retention("release")
    replica.enqueue(request("new", 18, 2, seq=3), end)
    replica.plan(end)
    assert "early" in replica.pins and "late" not in replica.pins


class TenantFirst(Hooks):
    """Calls of workflows named b* go first; ``preempt`` says whether to preempt for them."""

    static_order = False

    def __init__(self, preempt: bool) -> None:
        super().__init__()
        self.preempt = preempt

    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        return (0.0 if request.workflow.startswith("b") else 1.0, request.seq)

    def preempt_for(self, replica: Replica, waiting: Request, running: Request, now: float) -> bool:
        return self.preempt and waiting.workflow.startswith("b")


def _full_replica(preempt: bool) -> tuple[Replica, Request, Request, float]:
    """Two sequence slots, both taken by long decodes of a1 and a2 at t = end."""
    replica = make_replica(capacity=256, budget=2048, seqs=2, hooks=TenantFirst(preempt))
    a1, a2 = request("a1", 4, 400, seq=1), request("a2", 4, 400, seq=2)
    replica.enqueue(a1, 0.0)
    replica.enqueue(a2, 0.0)
    end = replica.plan(0.0)
    assert end is not None
    replica.complete(end)
    return replica, a1, a2, end


def test_fair_preemption_takes_the_last_running_call_for_the_first_waiting_one() -> None:
    replica, a1, a2, now = _full_replica(preempt=True)
    b1, b2 = request("b1", 4, 8, seq=3), request("b2", 4, 8, seq=4)
    replica.enqueue(b1, now)
    replica.enqueue(b2, now)
    step_end = replica.plan(now)
    assert step_end is not None
    # one preemption per step: a2 (last in queue order) made room for b1 alone
    assert replica.fair_preemptions == 1
    assert a2.preemptions == 1 and a1.preemptions == 0
    assert sorted(r.workflow for r in replica.running) == ["a1", "b1"]
    assert [r.workflow for r in replica.waiting] == ["b2", "a2"]
    done = replica.complete(step_end)
    done += drive(replica, step_end)[1]
    assert [r.workflow for r in done][:2] == ["b1", "b2"]
    assert [r.workflow for r in done][-1] == "a2"
    assert replica.kv.locked_blocks == 0 and replica.kv.anonymous_blocks == 0
    replica.kv.check()


def test_without_fair_preemption_a_full_replica_makes_the_newcomer_wait() -> None:
    replica, _, a2, now = _full_replica(preempt=False)
    b1 = request("b1", 4, 8, seq=3)
    replica.enqueue(b1, now)
    _, done = drive(replica, now)
    assert replica.fair_preemptions == 0 and a2.preemptions == 0
    assert [r.workflow for r in done] == ["a1", "a2", "b1"]


class PrefillLimit(Hooks):
    """FCFS with a fixed limit on the prompt tokens of a step."""

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.limit = limit

    def prefill_limit(self, replica: Replica, now: float) -> int | None:
        return self.limit


def test_a_prefill_limit_caps_the_prompt_tokens_of_a_step_not_its_decodes() -> None:
    replica = make_replica(budget=512, hooks=PrefillLimit(128))
    a = request("a", 1, 20, seq=1)  # 64 prompt tokens, then decodes
    replica.enqueue(a, 0.0)
    replica.plan(0.0)
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 64)]
    replica.complete(replica.step_end)
    b = request("b", 4, 3, seq=2)  # 256 prompt tokens
    c = request("c", 2, 3, seq=3)  # 128 prompt tokens
    replica.enqueue(b, replica.step_end)
    replica.enqueue(c, replica.step_end)
    replica.plan(replica.step_end)
    # a decodes (1 token, not counted); b takes the 128 prompt tokens; c is not admitted
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 1), ("b", 128)]
    assert [r.workflow for r in replica.waiting] == ["c"]
    replica.complete(replica.step_end)
    replica.plan(replica.step_end)
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 1), ("b", 128)]
    replica.complete(replica.step_end)
    replica.plan(replica.step_end)
    # b's prompt is done (it decodes), so c is admitted with the step's 128 prompt tokens
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 1), ("b", 1), ("c", 128)]


def test_no_prefill_limit_batches_as_the_budget_alone() -> None:
    def batches(hooks: Hooks) -> list[list[tuple[str, int]]]:
        replica = make_replica(budget=512, hooks=hooks)
        for i, blocks in enumerate([10, 4, 7]):
            replica.enqueue(request(f"w{i}", blocks, 5, seq=i), 0.0)
        seen = []
        now = 0.0
        while (end := replica.plan(now)) is not None:
            seen.append([(r.workflow, q) for r, q in replica._batch])
            now = end
            replica.complete(now)
        return seen

    plain = batches(Hooks())
    assert plain == batches(PrefillLimit(None))
    assert plain[0] == [("w0", 512)]
    assert batches(PrefillLimit(512)) == plain  # a limit at the budget changes nothing


def test_a_pin_with_host_copy_writes_through_and_outlives_its_expiry() -> None:
    """`host_copy`: the pin holds the 10 blocks on the GPU and copies them to the host;
    once the pin is given up and the GPU copy evicted, the next call reloads them all.
    A plain pin copies nothing."""
    plain = make_replica(capacity=24, hooks=Hooks(Retention("pin", ttl=60.0)), host_blocks=100)
    plain.enqueue(request("a", 10, 2, seq=1), 0.0)
    drive(plain)
    assert plain.host is not None and plain.host.cached_blocks == 0
    hooks = Hooks(Retention("pin", ttl=60.0, host_copy=True))
    replica = make_replica(capacity=24, hooks=hooks, host_blocks=100)
    replica.enqueue(request("a", 10, 2, seq=1), 0.0)
    end, _ = drive(replica)
    assert "a" in replica.pins and replica.kv.locked_blocks == 10
    assert replica.host is not None and replica.host.cached_blocks == 10
    replica.unpin("a", end)
    hooks.decision = Retention("release")
    # another workflow needs 21 of the 24 blocks: 7 of a's 10 are evicted, tail first
    replica.enqueue(request("b", 20, 2, seq=2), end)
    end, _ = drive(replica, end)
    nxt = Request("a", "c1", (("w:a", 0, 10),), 10 * BT + 5, 2, BT, seq=3)
    replica.enqueue(nxt, end)
    drive(replica, end)
    assert nxt.cached_tokens == 3 * BT and nxt.host_tokens == 7 * BT
