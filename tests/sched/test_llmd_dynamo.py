"""Table tests of ``llm-d`` and ``dynamo`` against their sources' rules (docs/baselines.md
sections 11 and 12): hand-built replica states whose expected pick follows from the
cited formula and default weights."""

from __future__ import annotations

import random

import pytest

from saga.engine.cluster import get_cluster
from saga.engine.kvcache import RadixKV, Run, skip_runs
from saga.engine.replica import Replica, Request
from saga.sched.baselines.dynamo import ActiveSequences, Dynamo, DynamoConfig, DynamoPriority
from saga.sched.baselines.llmd import LLMD, LLMDConfig, LLMDPriority, take_runs
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo

BT = 64
_seq = iter(range(1, 1_000_000))


def bind(policy: Policy, replicas: int, capacity: int = 100, seed: int = 0) -> list[Replica]:
    cluster = get_cluster("test-2")
    cost = cluster.cost_model()
    built = [
        Replica(i, cluster.engine, cost, policy, block_tokens=BT, capacity_blocks=capacity,
                eviction=policy.eviction_order(i))
        for i in range(replicas)
    ]
    policy.bind(PolicyContext(built, cost, BT, rng=random.Random(seed)))
    return built


def call(workflow: str, runs: tuple[Run, ...], prompt_tokens: int | None = None,
         call_id: str = "c0", slo: float | None = None) -> CallInfo:
    tokens = prompt_tokens if prompt_tokens is not None else sum(r[2] for r in runs) * BT
    return CallInfo(
        workflow=workflow, tenant="t", agent="a", call_id=call_id, index=0, tool=None,
        prompt_tokens=tokens, runs=runs, issued_at=0.0, workflow_arrival=0.0, slo=slo,
        ends_workflow=False,
    )


def queue(replica: Replica, n: int, prompt_tokens: int = BT) -> None:
    """``n`` calls waiting at ``replica`` (holding no KV)."""
    for i in range(n):
        c = call(f"q{replica.index}-{i}", ((f"w:q{replica.index}-{i}", 0, 1),), prompt_tokens)
        replica.enqueue(Request(c.workflow, c.call_id, c.runs, c.prompt_tokens, 16, BT,
                                next(_seq), info=c), 0.0)


def drain(replica: Replica) -> None:
    for request in list(replica.waiting):
        assert replica.withdraw(request)


def hold_blocks(replica: Replica, blocks: int) -> None:
    """KV blocks held by running requests (vLLM's usage counts them)."""
    assert replica.kv.allocate(blocks, 0.0)


def cache(kv: RadixKV, runs: tuple[Run, ...]) -> None:
    """``runs`` cached on the GPU, released (evictable, still a prefix hit)."""
    node, hit = kv.lock(runs, 0.0)
    rest = skip_runs(runs, hit)
    blocks = sum(r[2] for r in rest)
    assert kv.allocate(blocks, 0.0)
    new, _ = kv.insert(node, rest, 0.0)
    kv.unlock(node, 0.0)
    kv.release_anonymous(blocks, 0.0)
    kv.unlock(new, 0.0)


def wf(name: str, slo: float | None = None) -> WorkflowInfo:
    return WorkflowInfo(name, "t", "a", 0.0, slo)


# ---- llm-d: the endpoint picker ------------------------------------------------------------
PROMPT: tuple[Run, ...] = (("s:sys", 0, 4), ("w:a", 0, 4))  # 8 blocks, 512 tokens


def test_llmd_scores_are_the_weighted_sum_of_queue_kv_and_prefix_scores() -> None:
    policy = LLMD()
    r0, r1, r2 = bind(policy, 3)
    queue(r0, 4)
    queue(r2, 2)
    hold_blocks(r1, 50)  # KV usage 0.5
    hold_blocks(r2, 20)  # 0.2
    policy.picker.index.add(0, PROMPT, 0.0)  # routed here before: all 8 blocks match
    policy.picker.index.add(2, PROMPT[:1], 0.0)  # the shared 4 blocks only
    scores = policy.picker.scores(call("a", PROMPT))
    # queue: (max - q) / (max - min) = 0, 1, 0.5; KV: 1 - usage = 1, 0.5, 0.8;
    # prefix: matched / prompt blocks = 1, 0, 0.5; weights 2, 2, 3 (loadDefaultConfig)
    assert scores == pytest.approx({0: 0 + 2 + 3, 1: 2 + 1 + 0, 2: 1 + 1.6 + 1.5})
    assert policy.place(call("a", PROMPT), 0.0) == 0


def test_llmd_equal_queues_score_one_and_cached_free_blocks_are_free() -> None:
    policy = LLMD()
    r0, r1 = bind(policy, 2)
    queue(r0, 3)
    queue(r1, 3)
    cache(r0.kv, (("w:old", 0, 60),))  # released: vLLM counts it free, usage stays 0
    scores = policy.picker.scores(call("a", PROMPT))
    assert scores == pytest.approx({0: 2 + 2 + 0, 1: 2 + 2 + 0})


def test_llmd_hashes_only_the_first_256_blocks_of_16_tokens() -> None:
    policy = LLMD()
    bind(policy, 2)
    assert policy.picker.max_blocks == 256 * 16 // BT == 64
    long_a: tuple[Run, ...] = (("s:sys", 0, 64), ("w:a", 0, 100))
    long_b: tuple[Run, ...] = (("s:sys", 0, 64), ("w:b", 0, 100))
    policy.picker.index.add(1, take_runs(long_a, 64), 0.0)
    # b differs from a only beyond the 4096 hashed tokens: a full match for the router
    scores = policy.picker.scores(call("b", long_b))
    assert scores[1] - scores[0] == pytest.approx(3.0)


def test_llmd_index_holds_what_was_routed_not_what_the_engine_caches() -> None:
    policy = LLMD()
    _, r1 = bind(policy, 2)
    cache(r1.kv, PROMPT)  # on the engine, but never routed there
    first = policy.place(call("a", PROMPT), 0.0)
    again = policy.picker.scores(call("a", PROMPT))
    assert again[first] - again[1 - first] == pytest.approx(3.0)


def test_llmd_ties_are_broken_at_random_among_the_best() -> None:
    picks = set()
    for seed in range(20):
        policy = LLMD()
        *_, r2 = bind(policy, 3, seed=seed)
        queue(r2, 1)  # r2 scores lower on the queue; r0 and r1 tie
        picks.add(policy.place(call("a", PROMPT), 0.0))
    assert picks == {0, 1}


# ---- llm-d: flow control -------------------------------------------------------------------
def test_llmd_saturation_is_the_mean_of_the_worse_of_queue_and_kv_ratios() -> None:
    policy = LLMD()
    r0, r1 = bind(policy, 2)
    queue(r0, 5)  # 5 / 5 = 1.0
    hold_blocks(r1, 40)  # 0.4 / 0.8 = 0.5
    assert policy.flow.saturation(policy.ctx) == pytest.approx(0.75)
    assert policy.admit(wf("x"), 0.0).verdict == "admit"
    hold_blocks(r1, 40)  # 0.8 / 0.8 = 1.0: the pool is saturated at the usage limit 1.0
    assert policy.flow.saturation(policy.ctx) == pytest.approx(1.0)
    held = policy.admit(wf("y"), 0.0)
    assert held.verdict == "defer" and "saturation 1.00" in held.reason


def test_llmd_without_flow_control_admits_a_saturated_pool() -> None:
    policy = LLMD(LLMDConfig(flow_control=False))
    (r0,) = bind(policy, 1)
    queue(r0, 10)
    assert policy.admit(wf("x"), 0.0).verdict == "admit"


def test_llmd_priority_bands_serve_interactive_work_first() -> None:
    policy = LLMDPriority()
    (r0,) = bind(policy, 1)
    queue(r0, 5)  # saturated
    assert policy.admit(wf("batch"), 0.0).verdict == "defer"
    assert policy.admit(wf("chat", slo=3.0), 0.0).verdict == "defer"
    drain(r0)  # room again
    assert policy.admit(wf("batch"), 1.0).verdict == "defer"  # band 1 is served first
    assert policy.admit(wf("chat", slo=3.0), 1.0).verdict == "admit"
    assert policy.admit(wf("batch"), 2.0).verdict == "admit"
    # plain llm-d has one band: no such order
    plain = LLMD()
    (p0,) = bind(plain, 1)
    queue(p0, 5)
    assert plain.admit(wf("batch"), 0.0).verdict == "defer"
    assert plain.admit(wf("chat", slo=3.0), 0.0).verdict == "defer"
    drain(p0)
    assert plain.admit(wf("batch"), 1.0).verdict == "admit"


# ---- dynamo: the KV router's cost ------------------------------------------------------------
CALL_RUNS: tuple[Run, ...] = (("s:sys", 0, 4), ("w:a", 0, 6))  # 10 blocks, 640 tokens


def test_dynamo_cost_is_credited_prefill_plus_decode_blocks() -> None:
    policy = Dynamo()
    r0, r1, _ = bind(policy, 3)
    router = policy.kv_router
    cache(r0.kv, (*CALL_RUNS[:1], ("w:a", 0, 2)))  # 6 of its 10 blocks cached
    queue(r1, 1, prompt_tokens=128)  # 128 tokens of prefill pending = 2 blocks
    router.active[1].add(("other", "c0"), (("w:other", 0, 3),))
    router.active[2].add(("peer", "c0"), (("s:sys", 0, 4), ("w:peer", 0, 5)))
    costs = router.costs(call("a", CALL_RUNS))
    # r0: max(0, 640/64 - 1.0 x 6) + (0 active + 10 new) = 4 + 10
    # r1: (128 + 640)/64 - 0 + (3 active + 10 new) = 12 + 13
    # r2: 10 + (9 active + 6 new: the shared 4 blocks are active already) = 10 + 15
    assert costs == pytest.approx({0: 14.0, 1: 25.0, 2: 25.0})
    assert policy.place(call("a", CALL_RUNS), 0.0) == 0
    assert router.active[0].blocks == 10


def test_dynamo_prefill_load_scale_and_overlap_credit() -> None:
    policy = Dynamo(DynamoConfig(prefill_load_scale=2.0, overlap_score_credit=0.5))
    r0, _ = bind(policy, 2)
    cache(r0.kv, (*CALL_RUNS[:1], ("w:a", 0, 2)))
    costs = policy.kv_router.costs(call("a", CALL_RUNS))
    assert costs == pytest.approx({0: 2.0 * (10 - 0.5 * 6) + 10, 1: 2.0 * 10 + 10})


def test_dynamo_finished_calls_leave_the_active_set() -> None:
    policy = Dynamo()
    bind(policy, 2)
    c = call("a", CALL_RUNS)
    chosen = policy.place(c, 0.0)
    assert policy.kv_router.active[chosen].blocks == 10
    policy.on_call_finished(c, chosen, 1.0)
    assert policy.kv_router.active[chosen].blocks == 0
    assert policy.kv_router.active[chosen].calls == {}


def test_active_sequences_count_shared_blocks_once() -> None:
    active = ActiveSequences()
    active.add(("a", "c0"), (("s:sys", 0, 4), ("w:a", 0, 3)))
    active.add(("b", "c0"), (("s:sys", 0, 4), ("w:b", 0, 2)))
    active.add(("a", "c1"), (("s:sys", 0, 4), ("w:a", 0, 5)))
    assert active.blocks == 4 + 5 + 2
    assert active.new_blocks((("s:sys", 0, 6), ("w:a", 2, 6))) == 2 + 3
    active.remove(("a", "c1"))
    assert active.blocks == 4 + 3 + 2


def test_dynamo_ties_are_broken_at_random_and_temperature_zero_is_deterministic_otherwise() -> None:
    picks = set()
    for seed in range(20):
        policy = Dynamo()
        bind(policy, 3, seed=seed)
        policy.kv_router.active[2].add(("x", "c0"), (("w:x", 0, 1),))  # r2 costs 1 more
        picks.add(policy.place(call("a", CALL_RUNS), 0.0))
    assert picks == {0, 1}


def test_dynamo_softmax_temperature_samples_every_replica_by_normalised_cost() -> None:
    picks: dict[int, int] = {0: 0, 1: 0}
    for seed in range(400):
        policy = Dynamo(DynamoConfig(router_temperature=1.0))
        bind(policy, 2, seed=seed)
        policy.kv_router.active[1].add(("x", "c0"), (("w:x", 0, 5),))
        picks[policy.place(call("a", CALL_RUNS), 0.0)] += 1
    # p(r1) = e^-1 / (1 + e^-1) = 0.269 (costs 10 and 15, range 5, temperature 1)
    assert 0.2 < picks[1] / 400 < 0.34


def test_dynamo_router_queue_holds_work_while_every_replica_is_busy() -> None:
    policy = Dynamo()
    r0, r1 = bind(policy, 2)
    limit = 16 * r0.config.max_num_batched_tokens
    queue(r0, 1, prompt_tokens=limit + BT)
    assert policy.admit(wf("x"), 0.0).verdict == "admit"  # r1 has room
    queue(r1, 1, prompt_tokens=limit + BT)
    held = policy.admit(wf("y"), 0.0)
    assert held.verdict == "defer" and "router queue" in held.reason
    assert list(policy.pending) == ["y"]
    off = Dynamo(DynamoConfig(router_queue_threshold=None))
    o0, o1 = bind(off, 2)
    queue(o0, 1, prompt_tokens=limit + BT)
    queue(o1, 1, prompt_tokens=limit + BT)
    assert off.admit(wf("y"), 0.0).verdict == "admit"


def test_dynamo_a_call_placed_again_leaves_its_first_replica() -> None:
    policy = Dynamo()
    bind(policy, 2)
    c = call("a", CALL_RUNS)
    first = policy.place(c, 0.0)
    policy.ctx.replicas[first].up = False  # it failed: the runtime places the call again
    second = policy.place(c, 1.0)
    assert second != first
    assert policy.kv_router.active[first].blocks == 0
    policy.on_call_finished(c, second, 2.0)
    assert [a.blocks for a in policy.kv_router.active] == [0, 0]


def test_dynamo_priority_releases_the_strict_tier_first_and_orders_the_engine_by_priority() -> None:
    policy = DynamoPriority()
    r0, _ = bind(policy, 2)
    limit = 16 * r0.config.max_num_batched_tokens
    for replica in policy.ctx.replicas:
        queue(replica, 1, prompt_tokens=limit + BT)  # every replica busy
    assert policy.admit(wf("batch"), 0.0).verdict == "defer"
    assert policy.admit(wf("chat", slo=3.0), 0.0).verdict == "defer"
    assert policy.pending == {"batch": 0, "chat": 1}
    drain(r0)  # room again
    assert policy.admit(wf("batch"), 1.0).verdict == "defer"  # tier 1 goes first
    assert policy.admit(wf("chat", slo=3.0), 1.0).verdict == "admit"
    assert policy.admit(wf("batch"), 2.0).verdict == "admit"
    chat, batch = call("chat", CALL_RUNS, slo=3.0), call("batch", CALL_RUNS)
    early = Request("batch", "c0", CALL_RUNS, 640, 16, BT, 1, info=batch)
    late = Request("chat", "c0", CALL_RUNS, 640, 16, BT, 2, info=chat)
    early.enqueued_at, late.enqueued_at = 1.0, 2.0
    assert policy.queue_key(r0, late, 3.0) < policy.queue_key(r0, early, 3.0)
    plain = Dynamo()
    assert plain.queue_key(r0, early, 3.0) < plain.queue_key(r0, late, 3.0)
