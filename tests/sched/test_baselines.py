"""Exact-state tests of the baselines (docs/baselines.md)."""

from __future__ import annotations

import random

import pytest

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.engine.kvcache import KVNode, RadixKV, Run
from saga.engine.replica import Replica, Request
from saga.sched.baselines import (
    Autellix,
    Belady,
    Continuum,
    InferCept,
    KVFlow,
    SGLang,
    SGLangConfig,
)
from saga.sched.baselines.continuum import best_ttl
from saga.sched.baselines.infercept import Interception, least_waste, memory_waste
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.registry import build_policy, list_policies
from saga.sched.vllm import ConsistentHashRouter, _md5_int
from saga.sim.simulator import CallRecord, Simulation

BT = 64
SYS: Run = ("s:sys", 0, 16)
BASELINES = [
    "vllm-rr", "vllm-affinity", "vllm-least-loaded", "sglang", "autellix", "continuum",
    "infercept", "kvflow", "belady", "throughput",
]


# ---- helpers -------------------------------------------------------------------------------
def bind(policy: Policy, replicas: int = 2, capacity: int = 512, host: int = 0) -> list[Replica]:
    """Bind ``policy`` to fresh replicas of the test-2 engine, as the simulator does."""
    cluster = get_cluster("test-2")
    cost = cluster.cost_model()
    built = [
        Replica(
            i, cluster.engine, cost, policy, block_tokens=BT, capacity_blocks=capacity,
            host_capacity_blocks=host, eviction=policy.eviction_order(i),
        )
        for i in range(replicas)
    ]
    policy.bind(PolicyContext(built, cost, BT))
    return built


def info(
    workflow: str, runs: tuple[Run, ...], *, index: int = 0, tool: str | None = None,
    prompt_tokens: int | None = None, ends: bool = False, next_gap: float | None = None,
    arrival: float = 0.0, agent: str = "coder",
) -> CallInfo:
    tokens = prompt_tokens if prompt_tokens is not None else sum(r[2] for r in runs) * BT
    return CallInfo(
        workflow=workflow, tenant="t", agent=agent, call_id=f"c{index}", index=index,
        tool=tool, prompt_tokens=tokens, runs=runs, issued_at=0.0, workflow_arrival=arrival,
        slo=None, ends_workflow=ends, output_tokens=16, next_gap=next_gap,
    )


_seq = iter(range(1, 1_000_000))


def request(call: CallInfo, enqueued: float = 0.0, scheduled: float = -1.0) -> Request:
    req = Request(call.workflow, call.call_id, call.runs, call.prompt_tokens, 16, BT,
                  next(_seq), info=call)
    req.enqueued_at = enqueued
    req.scheduled_at = scheduled
    return req


def load(replica: Replica, calls: int) -> None:
    """Make ``replica`` look busy with ``calls`` queued calls."""
    for i in range(calls):
        replica.waiting.append(request(info(f"busy-{replica.index}-{i}", (("w:x", 0, 1),))))


def cache(kv: RadixKV, runs: tuple[Run, ...], now: float) -> KVNode:
    """Cache ``runs`` as a finished call leaves them (locked: unlock to release)."""
    node, hit = kv.lock(runs, now)
    rest = _skip(runs, hit)
    blocks = sum(r[2] for r in rest)
    assert kv.allocate(blocks, now)
    new, _ = kv.insert(node, rest, now)
    kv.unlock(node, now)
    kv.release_anonymous(blocks, now)
    return new


def _skip(runs: tuple[Run, ...], blocks: int) -> tuple[Run, ...]:
    out = []
    for ns, first, count in runs:
        if blocks >= count:
            blocks -= count
            continue
        out.append((ns, first + blocks, count - blocks))
        blocks = 0
    return tuple(out)


def chain(
    wid: str, calls: int, first_blocks: int, step_blocks: int, output: int, gap: float,
    arrival: float = 0.0, tool: str = "bash",
) -> Workflow:
    """A chain agent: each call's prompt extends the previous call's prompt and output."""
    out, blocks = [], first_blocks
    for k in range(calls):
        prompt = Prompt(1000 + blocks * BT, (("sys", 1000),), ((0, blocks),))
        after = (f"c{k - 1}",) if k else ()
        out.append(Call(f"c{k}", prompt, output, after, gap if k else 0.0, tool if k else None))
        blocks += output // BT + step_blocks
    return Workflow(wid, "t", "coder", arrival, tuple(out))


def single(wid: str, arrival: float, blocks: int, output: int) -> Workflow:
    # its client marks the end (the baselines' last-call rules are under test here)
    return Workflow(wid, "t", "noise", arrival, (Call("c0", Prompt(blocks * BT, (), ((0, blocks),)),
                                                       output),), end_signal="explicit")


# ---- vllm-affinity -------------------------------------------------------------------------
@pytest.mark.parametrize("workflow", ["w-0", "w-1", "w-17", "session-abc"])
def test_vllm_affinity_keeps_a_session_on_its_hashed_replica(workflow: str) -> None:
    policy = build_policy("vllm-affinity")
    replicas = bind(policy, replicas=4)
    router = policy.router
    assert isinstance(router, ConsistentHashRouter)
    home = router._lookup(_md5_int(workflow))
    for step in range(4):
        load(replicas[home], 3)  # the home only gets busier: affinity does not care
        assert policy.place(info(workflow, (SYS,), index=step), float(step)) == home


# ---- sglang --------------------------------------------------------------------------------
W1_FIRST: tuple[Run, ...] = (SYS, ("w:w1", 0, 20))
W1_NEXT: tuple[Run, ...] = (SYS, ("w:w1", 0, 24))


@pytest.mark.parametrize(
    ("abs_threshold", "load0", "load1", "runs", "expected"),
    [
        (64, 3, 0, W1_NEXT, 0),  # best prefix match wins over a lighter replica
        (64, 0, 3, W1_NEXT, 0),
        (2, 3, 0, W1_NEXT, 1),  # 3 - 0 > 2 and 3 > 1.5 * 0: imbalanced, shortest queue
        (2, 4, 3, W1_NEXT, 0),  # 4 - 3 <= 2: balanced, prefix wins
        (64, 3, 0, (("w:w2", 0, 20),), 1),  # no match above 0.3: least loaded
    ],
)
def test_sglang_routes_to_the_best_prefix_unless_imbalanced(
    abs_threshold: int, load0: int, load1: int, runs: tuple[Run, ...], expected: int
) -> None:
    policy = SGLang(SGLangConfig(balance_abs_threshold=abs_threshold))
    replicas = bind(policy)
    assert policy.place(info("w1", W1_FIRST), 0.0) == 0  # empty trees, equal load: index 0
    load(replicas[0], load0)
    load(replicas[1], load1)
    assert policy.place(info(runs[-1][0][2:], runs, index=1), 1.0) == expected


def test_sglang_router_tree_is_built_from_routed_prompts_not_engine_state() -> None:
    policy = SGLang()
    bind(policy)
    policy.place(info("w1", W1_FIRST), 0.0)
    assert policy.cache_router.matched_blocks(0, W1_NEXT) == 36
    assert policy.cache_router.matched_blocks(1, W1_NEXT) == 0


def test_sglang_orders_waiting_calls_by_longest_cached_prefix_then_fcfs_beyond_128() -> None:
    policy = SGLang()
    (replica,) = bind(policy, replicas=1)
    replica.kv.unlock(cache(replica.kv, (("w:a", 0, 20),), 0.0), 0.0)
    early = request(info("b", (("w:b", 0, 20),)), enqueued=1.0)
    late = request(info("a", (("w:a", 0, 30),)), enqueued=2.0)
    replica.waiting[:] = [early, late]
    order = sorted(replica.waiting, key=lambda r: policy.queue_key(replica, r, 3.0))
    assert order == [late, early]
    load(replica, 127)  # 129 waiting: SGLang falls back to first come first served
    assert policy.queue_key(replica, early, 3.0) < policy.queue_key(replica, late, 3.0)


# ---- autellix -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("service", "level"), [(0.0, 0), (0.019, 0), (0.02, 1), (0.05, 2), (0.5, 5), (100.0, 6)]
)
def test_autellix_queue_boundaries_double(service: float, level: int) -> None:
    assert Autellix().level_of(service) == level


def test_autellix_orders_by_program_attained_service_and_promotes_the_starved() -> None:
    policy = Autellix()
    (replica,) = bind(policy, replicas=1)
    # program a has been served 1 s (one call admitted at 0, finished at 1), b nothing
    policy.retention(replica, request(info("a", (SYS,)), enqueued=0.0, scheduled=0.0), 1.0)
    a = request(info("a", (SYS,), index=1), enqueued=10.0)
    b = request(info("b", (SYS,)), enqueued=11.0)
    # at 11 s the lightly served program goes first although it came later
    assert policy.queue_key(replica, b, 11.0) < policy.queue_key(replica, a, 11.0)
    # a has waited 8 s = β x its 1 s of service at 18 s: promoted to the top queue
    assert policy.queue_key(replica, a, 17.9) > policy.queue_key(replica, b, 17.9)
    assert policy.queue_key(replica, a, 18.0) < policy.queue_key(replica, b, 18.0)


def test_autellix_balancer_sends_short_prompts_to_the_least_loaded_and_long_ones_home() -> None:
    policy = Autellix()
    replicas = bind(policy)
    long_runs = (SYS, ("w:a", 0, 40))  # 3584 tokens > 2048
    assert policy.place(info("a", long_runs), 0.0) == 0
    load(replicas[0], 5)
    assert policy.place(info("a", long_runs, index=1), 1.0) == 0  # sticks to its replica
    assert policy.place(info("a", (SYS,), index=2), 2.0) == 1  # short: least loaded


# ---- continuum ----------------------------------------------------------------------------
ONE_REPLICA = get_cluster("test-2").model_copy(update={"replicas": 1})


def two_call_agent(gap: float) -> Workflow:
    """100 blocks of prompt and one of output, then a call that extends them."""
    return Workflow("w", "t", "coder", 0.0, (
        Call("c0", Prompt(100 * BT, (), ((0, 100),)), 64),
        Call("c1", Prompt(102 * BT, (), ((0, 102),)), 16, ("c0",), gap, "bash"),
    ))


def calls_of(policy: str, workflows: list[Workflow]) -> dict[tuple[str, str], CallRecord]:
    result = Simulation(ONE_REPLICA, build_policy(policy), workflows).run()
    return {(c.workflow, c.call_id): c for c in result.calls}


def test_continuum_pins_through_a_tool_call_shorter_than_its_ttl() -> None:
    # w's first call ends at 0.664 s; two 250-block calls then need memory during its
    # 1.5 s tool call. vLLM's LRU evicts w; Continuum's 2 s cold-start pin keeps it.
    workflows = [two_call_agent(1.5), single("n0", 0.7, 250, 4), single("n1", 0.7, 250, 4)]
    assert calls_of("vllm-affinity", workflows)["w", "c1"].cached_tokens == 11 * BT
    assert calls_of("continuum", workflows)["w", "c1"].cached_tokens == 101 * BT


def test_continuum_releases_at_ttl_expiry() -> None:
    # a 6 s tool call outlives the 2 s pin: the blocks are LRU-evicted as under vLLM
    workflows = [two_call_agent(6.0), single("n0", 3.0, 250, 4), single("n1", 3.0, 250, 4)]
    assert calls_of("continuum", workflows)["w", "c1"].cached_tokens == 11 * BT


def test_continuum_releases_under_memory_pressure() -> None:
    # a 450-block call does not fit beside the 101 pinned blocks: the pin goes at once
    workflows = [two_call_agent(1.5), single("n0", 0.7, 450, 4)]
    calls = calls_of("continuum", workflows)
    assert calls["n0", "c0"].scheduled_at == 0.7
    assert calls["w", "c1"].cached_tokens == 61 * BT


def test_continuum_queues_by_program_arrival() -> None:
    policy = Continuum()
    (replica,) = bind(policy, replicas=1)
    old = request(info("old", (SYS,), index=3, arrival=0.0), enqueued=9.0)
    new = request(info("new", (SYS,), arrival=5.0), enqueued=6.0)
    assert policy.queue_key(replica, old, 9.0) < policy.queue_key(replica, new, 9.0)


@pytest.mark.parametrize(
    ("durations", "benefit", "cost", "ttl"),
    [
        ([1.0, 2.0, 3.0, 10.0], 4.0, 0.2, 3.0),  # 3/4*4 - 0.6 = 2.4 beats 10 s (4 - 2 = 2.0)
        ([1.0, 2.0, 3.0, 10.0], 4.0, 0.01, 10.0),  # cheap memory: cover every tool call
        ([1.0, 2.0, 3.0, 10.0], 0.1, 0.5, 0.0),  # a pin never pays: release
        ([1.0, 1.0, 1.0, 5.0], 1.0, 0.1, 1.0),  # F(1) = 3/4 counts every equal sample
    ],
)
def test_continuum_ttl_maximizes_expected_benefit_minus_memory_cost(
    durations: list[float], benefit: float, cost: float, ttl: float
) -> None:
    assert best_ttl(durations, benefit, cost) == ttl


def test_continuum_learns_tool_durations_after_the_cold_start() -> None:
    policy = Continuum()
    (replica,) = bind(policy, replicas=1)
    for k in range(100):  # 100 tool calls of 0.5 s observed at one call site
        policy.on_call_finished(info(f"x{k}", (SYS,), tool="bash"), 0, 10.0 * k)
        policy.on_call_ready(info(f"x{k}", (SYS,), index=1, tool="bash"), 10.0 * k + 0.5)
    call = request(info("w", (SYS, ("w:w", 0, 40)), tool="bash"), enqueued=0.0, scheduled=0.0)
    call.locked_blocks = 56
    assert policy.retention(replica, call, 1.0) == Retention("pin", ttl=0.5)
    last = request(info("w", (SYS,), tool="bash", ends=True), scheduled=0.0)
    assert policy.retention(replica, last, 1.0).kind == "release"


# ---- infercept ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("context", "other", "tool", "recompute", "swap", "can_swap", "choice"),
    [
        # preserve 2*1000, discard 0.1*(1000+0), swap 2*0.5*1000: discard
        (1000, 0, 2.0, 0.1, 0.5, True, "discard"),
        # a short tool: preserve 0.05*1000 = 50 beats discard 100
        (1000, 0, 0.05, 0.1, 0.5, True, "preserve"),
        # a big batch makes recompute stall everyone: 0.1*9000 = 900 > preserve 500
        (1000, 8000, 0.5, 0.1, 0.5, False, "preserve"),
        # a cheap swap (mostly pipelined): 2*0.01*9000 = 180 beats both
        (1000, 8000, 0.5, 0.1, 0.01, True, "swap"),
        # same numbers without a host tier
        (1000, 8000, 0.5, 0.1, 0.01, False, "preserve"),
    ],
)
def test_infercept_picks_the_least_memory_time_waste(
    context: int, other: int, tool: float, recompute: float, swap: float, can_swap: bool,
    choice: str,
) -> None:
    case = Interception(context, other, tool, recompute, swap, 1.0, can_swap)
    assert least_waste(case) == choice


def test_infercept_waste_formulas() -> None:
    case = Interception(1000, 3000, 2.0, 0.25, 0.125, 2.0)
    assert memory_waste(case) == {
        "preserve": 2.0 * 1000 * 2.0, "swap": 2 * 0.125 * 4000 * 2.0, "discard": 0.25 * 4000 * 2.0,
    }


def test_infercept_maps_its_choice_to_a_retention() -> None:
    policy = InferCept()
    (replica,) = bind(policy, replicas=1)
    # cold start: a 2 s tool call; an idle replica makes recompute cheap: discard
    short = request(info("w", (SYS, ("w:w", 0, 4))), scheduled=0.0)
    assert policy.retention(replica, short, 1.0).kind == "drop"
    # a long context with a big batch running: recompute stalls it, preserve for 2 x 2 s
    busy = [request(info(f"r{i}", (("w:r", 0, 1),)), scheduled=0.0) for i in range(8)]
    for r in busy:
        r.computed = 30_000
    replica.running[:] = busy
    long = request(info("w", (SYS, ("w:w", 0, 400))), scheduled=0.0)
    assert policy.retention(replica, long, 1.0) == Retention("pin", ttl=4.0)


# ---- kvflow -------------------------------------------------------------------------------
def test_kvflow_evicts_by_steps_to_execution_then_lru() -> None:
    policy = KVFlow()
    (replica,) = bind(policy, replicas=1, capacity=100)
    kv = replica.kv
    runs = {
        "ready": (("s:hot", 0, 10), ("w:ready", 0, 10)),  # a call queued: 0 steps
        "tool": (("w:tool", 0, 10),),  # in a tool call: 1 step
        "done": (("s:cold", 0, 10), ("w:done", 0, 10)),  # finished: never again
    }
    for name, r in runs.items():
        policy.on_call_ready(info(name, r), 0.0)
    policy.on_call_finished(info("tool", runs["tool"]), 0, 1.0)
    policy.on_call_finished(info("done", runs["done"]), 0, 1.0)
    policy.on_workflow_finished(WorkflowInfo("done", "t", "coder", 0.0, None), 1.0)
    # released in the order LRU would evict: ready, tool, done
    for t, name in enumerate(["ready", "tool", "done"]):
        kv.unlock(cache(kv, runs[name], float(t)), float(t))
    assert kv.free_blocks == 50
    evicted: list[str] = []
    kv.on_evict = lambda node, blocks: evicted.append(f"{node.namespace}:{blocks}")
    assert kv.allocate(100, 5.0)
    assert evicted == ["w:done:10", "s:cold:10", "w:tool:10", "w:ready:10", "s:hot:10"]


def test_kvflow_offloads_and_prefetches_one_transfer_before_the_predicted_call() -> None:
    policy = KVFlow()
    (replica,) = bind(policy, replicas=1, host=1000)
    call = request(info("w", (SYS, ("w:w", 0, 400))), scheduled=0.0)
    call.generated = 16
    cost = policy.ctx.cost
    transfer = cost.host_transfer_time(call.total_tokens * cost.model.kv_bytes_per_token())
    decision = policy.retention(replica, call, 10.0)
    assert decision == Retention("offload", prefetch_at=10.0 + 2.0 - transfer)
    (no_host,) = bind(KVFlow(), replicas=1)
    assert KVFlow().retention(no_host, call, 10.0).kind == "release"


# ---- belady -------------------------------------------------------------------------------
def test_belady_evicts_the_block_used_furthest_in_the_future() -> None:
    policy = Belady()
    assert policy.offline
    (replica,) = bind(policy, replicas=1, capacity=60)
    kv = replica.kv
    gaps = {"soon": 1.0, "late": 50.0, "mid": 5.0, "never": None, "active": 100.0}
    for name, gap in gaps.items():
        runs = (("w:" + name, 0, 10),)
        policy.on_call_ready(info(name, runs), 0.0)
        policy.retention(replica, request(info(name, runs, next_gap=gap)), 2.0)
        policy.on_call_finished(info(name, runs), 0, 2.0)
        kv.unlock(cache(kv, runs, 2.0), 2.0)
    policy.on_call_ready(info("active", (("w:active", 0, 10),), index=1), 3.0)  # its call is here
    evicted: list[str] = []
    kv.on_evict = lambda node, blocks: evicted.append(node.namespace)
    assert kv.allocate(60, 4.0)
    assert evicted == ["w:never", "w:late", "w:mid", "w:soon", "w:active"]


# ---- throughput ---------------------------------------------------------------------------
def saturating_workload(n: int, seed: int) -> list[Workflow]:
    """Short agents with heterogeneous sizes and long tool calls, in a closed loop."""
    rng = random.Random(seed)
    return [
        chain(f"w{i}", rng.randint(1, 2), rng.randint(2, 30), rng.randint(1, 4),
              rng.choice([32, 128, 512, 1024]), rng.uniform(1.0, 4.0))
        for i in range(n)
    ]


def test_throughput_reaches_the_highest_completed_throughput_at_saturation() -> None:
    # test-2 batches at most 16 calls per replica; 32 agents in flight keep both full
    workflows = saturating_workload(200, seed=1)
    rates = {}
    for name in BASELINES:
        result = Simulation(get_cluster("test-2"), build_policy(name), workflows,
                            closed_loop=32).run()
        assert all(w.finished_at >= 0 for w in result.workflows)
        rates[name] = sum(c.output_tokens for c in result.calls) / result.end
    # Deployable baselines only: belady reads the future. Within 1 %: the run is one
    # closed loop with a drain tail, and differences below that are its noise.
    best_other = max(v for k, v in rates.items() if k not in ("throughput", "belady"))
    assert rates["throughput"] >= 0.99 * best_other, rates


# ---- every policy --------------------------------------------------------------------------
def smoke_workload() -> list[Workflow]:
    rng = random.Random(7)
    return [
        chain(f"w{i}", rng.randint(1, 5), rng.randint(5, 60), rng.randint(1, 6),
              rng.choice([64, 200, 300]), rng.uniform(0.1, 3.0), arrival=rng.uniform(0, 10),
              tool=rng.choice(["bash", "edit"]))
        for i in range(40)
    ]


@pytest.mark.parametrize("cluster", ["test-2", "small"])
@pytest.mark.parametrize("name", list_policies())
def test_every_policy_completes_every_workflow_without_leaking_kv(name: str, cluster: str) -> None:
    workflows = smoke_workload()
    sim = Simulation(get_cluster(cluster), build_policy(name), workflows)
    result = sim.run()
    assert [w.workflow for w in result.workflows if w.finished_at < 0] == []
    assert len(result.calls) == sum(len(w.calls) for w in workflows)
    for replica in sim.replicas:
        replica.kv.check()
        assert (replica.kv.locked_blocks, replica.kv.anonymous_blocks, replica.pins) == (0, 0, {})
        assert not replica.waiting and not replica.running


def test_every_baseline_is_registered() -> None:
    assert set(BASELINES) <= set(list_policies())
