"""Placement: affinity kept while home is fine, work stolen when home is overloaded."""

from __future__ import annotations

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.kvcache import RadixKV, Run
from saga.engine.replica import Replica, Request
from saga.sched.policy import CallInfo, PolicyContext
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.saga.placement import Estimate, Predictor, pick

CFG = SagaConfig(steal_margin=0.15, steal_min_gain=0.5, colocate_slack=0.25, colocate_abs=0.0)


def test_pick_keeps_home_unless_another_replica_is_clearly_better() -> None:
    homed = [0.0, 0.0]
    near = [Estimate(0, backlog=2.0, service=1.0), Estimate(1, backlog=0.0, service=2.8)]
    assert pick(near, home=0, homed=homed, config=CFG).replica == 0  # gain 0.2 s: stay
    far = [Estimate(0, backlog=20.0, service=1.0), Estimate(1, backlog=0.0, service=4.0)]
    assert pick(far, home=0, homed=homed, config=CFG).replica == 1  # gain 17 s > 15 % of 21 s
    no_steal = CFG.model_copy(update={"steal": False})
    assert pick(far, home=0, homed=homed, config=no_steal).replica == 0


def test_new_workflows_colocate_within_the_working_set_bound() -> None:
    est = [Estimate(0, 0.0, 1.0), Estimate(1, 0.0, 3.0), Estimate(2, 0.0, 2.0)]
    # replica 0 (cheapest: it holds the shared prefix) has a working set 1.2x the least
    assert pick(est, home=None, homed=[120.0, 100.0, 200.0], config=CFG).replica == 0
    # ... but not 1.3x: the best of the replicas within bound wins instead
    assert pick(est, home=None, homed=[130.0, 100.0, 120.0], config=CFG).replica == 2


def test_a_new_workflow_breaks_a_tie_toward_the_least_working_set_homed() -> None:
    """Equal completions (no prefix anywhere, nothing running: the workflows homed on
    replica 0 are in their tools) go where fewer workflows will come back, then to the
    lowest index."""
    est = [Estimate(0, 0.0, 2.0), Estimate(1, 0.0, 2.0), Estimate(2, 0.0, 2.0)]
    loose = CFG.model_copy(update={"colocate_abs": 10_000.0})
    assert pick(est, home=None, homed=[1500.0, 900.0, 900.0], config=loose).replica == 1
    assert pick(est, home=None, homed=[0.0, 0.0, 0.0], config=loose).replica == 0
    # a strictly shorter completion still wins over a lighter working set
    faster = [Estimate(0, 0.0, 1.9), *est[1:]]
    assert pick(faster, home=None, homed=[1500.0, 0.0, 0.0], config=loose).replica == 0


BT = 64
RUNS: tuple[Run, ...] = (("s:sys", 0, 16), ("w:a", 0, 200))


def _cluster() -> tuple[SagaPolicy, list[Replica]]:
    cost = cost_model_for("llama-3.1-8b", "h100-sxm", 1)
    policy = SagaPolicy(CFG)
    engine = EngineConfig(max_num_batched_tokens=8192, max_num_seqs=64)
    replicas = [
        Replica(i, engine, cost, policy, block_tokens=BT, capacity_blocks=4096)
        for i in range(2)
    ]
    policy.bind(PolicyContext(replicas=replicas, cost=cost, block_tokens=BT))
    return policy, replicas


def _cache(kv: RadixKV, runs: tuple[Run, ...]) -> None:
    node, hit = kv.lock(runs)
    total = sum(r[2] for r in runs)
    assert kv.allocate(total - hit)
    new, added = kv.insert(node, runs[1:] if hit else runs)
    kv.unlock(node)
    kv.adopt(added)
    kv.unlock(new)


def _call(index: int, runs: tuple[Run, ...], t: float) -> CallInfo:
    tokens = sum(r[2] for r in runs) * BT
    return CallInfo("a", "acme", "swe", f"c{index}", index, "bash" if index else None,
                    tokens, runs, t, 0.0, None, False)


def _home_on_zero(policy: SagaPolicy, replicas: list[Replica]) -> CallInfo:
    first = _call(0, (*RUNS[:1], ("w:a", 0, 150)), 0.0)
    policy.on_call_ready(first, 0.0)
    policy.on_call_finished(first, 0, 10.0)  # home: replica 0
    _cache(replicas[0].kv, RUNS)
    nxt = _call(1, RUNS, 15.0)
    policy.on_call_ready(nxt, 15.0)
    return nxt


def test_affinity_is_kept_when_home_is_not_overloaded() -> None:
    policy, replicas = _cluster()
    nxt = _home_on_zero(policy, replicas)
    assert policy.place(nxt, 15.0) == 0
    assert policy.steals == 0


def test_work_is_stolen_when_home_is_overloaded() -> None:
    policy, replicas = _cluster()
    nxt = _home_on_zero(policy, replicas)
    for k in range(6):  # 6 x 100k tokens of prefill queued at home
        r = Request("other", f"o{k}", (("w:o", k * 2000, 1500),), 100_000, 100, BT, k)
        replicas[0].enqueue(r, 15.0)
    assert policy.place(nxt, 15.0) == 1
    assert policy.steals == 1


def test_a_steal_is_weighed_by_the_delay_its_prefill_imposes() -> None:
    # home: 10 s of backlog; the other replica is free now but runs 4 calls that would
    # each wait out the stolen call's 6 s of recompute (imposed 24 s)
    crowded = [Estimate(0, 10.0, 2.0, imposed=0.5), Estimate(1, 0.0, 6.0, imposed=24.0)]
    assert pick(crowded, home=0, homed=[0.0, 0.0], config=CFG).replica == 0  # 30 s vs 12.5 s
    selfish = CFG.model_copy(update={"steal_imposed": False})
    assert pick(crowded, home=0, homed=[0.0, 0.0], config=selfish).replica == 1  # 6 s vs 12 s
    # nothing runs there: the steal imposes nothing and still pays
    idle = [Estimate(0, 10.0, 2.0, imposed=0.5), Estimate(1, 0.0, 6.0, imposed=0.0)]
    assert pick(idle, home=0, homed=[0.0, 0.0], config=CFG).replica == 1


def test_new_workflows_are_placed_by_their_own_completion_only() -> None:
    # the imposed delay weighs steals, not first placements (every replica must prefill)
    est = [Estimate(0, 0.0, 1.0, imposed=50.0), Estimate(1, 0.0, 2.0, imposed=0.0)]
    assert pick(est, home=None, homed=[0.0, 0.0], config=CFG).replica == 0


def test_imposed_delay_is_the_calls_prefill_times_the_calls_running_there() -> None:
    policy, replicas = _cluster()
    predictor = policy.predictor
    prompt = sum(r[2] for r in RUNS) * BT
    _cache(replicas[0].kv, RUNS)  # replica 0 holds the whole prompt, replica 1 none of it

    class Busy:  # replica 1 as a placement reads it, with 3 calls running
        def __init__(self, replica: Replica) -> None:
            self._replica = replica
            self.running = [object()] * 3

        def __getattr__(self, name: str) -> object:
            return getattr(self._replica, name)

    home, busy = predictor.estimate_all([replicas[0], Busy(replicas[1])], RUNS, prompt, 10.0)
    assert home.imposed == 0.0  # nothing runs at home
    assert busy.imposed == 3 * predictor.prefill(prompt, 0)


def test_backlog_is_priced_as_prefills_of_the_queued_calls_mean_size() -> None:
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    engine = EngineConfig(max_num_batched_tokens=4096, max_num_seqs=64)
    queue, fixed = Predictor(cost, 128, "queue"), Predictor(cost, 128, "fixed")
    replica = Replica(0, engine, cost, SagaPolicy(), block_tokens=128, capacity_blocks=80)
    assert queue.backlog_seconds(replica) == fixed.backlog_seconds(replica) == 0.0
    for k, blocks in enumerate((16, 23)):  # 2,048 and 2,944 tokens: 2,496 on average
        r = Request("other", f"o{k}", (("w:o", k * 100, blocks),), blocks * 128, 32, 128, k)
        replica.enqueue(r, 0.0)
    assert replica.backlog_tokens == 4992
    # the mean, 2,496 tokens, is taken up to whole blocks: 2,560
    assert queue.backlog_seconds(replica) == 4992 * cost.prefill_time(2560, 0) / 2560
    assert fixed.backlog_seconds(replica) == 4992 * fixed.t_token
    # a 2.5k-token prefill costs under a seventh of a token at a 16k context, per token
    assert queue.backlog_seconds(replica) < fixed.backlog_seconds(replica) / 7


def test_the_backlog_price_is_remembered_by_tokens_and_queue_and_bounded() -> None:
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    engine = EngineConfig(max_num_batched_tokens=4096, max_num_seqs=64)
    queue = Predictor(cost, 128, "queue")
    replica = Replica(0, engine, cost, SagaPolicy(), block_tokens=128, capacity_blocks=80)
    seen = []
    for k, blocks in enumerate((16, 23, 7)):
        r = Request("other", f"o{k}", (("w:o", k * 100, blocks),), blocks * 128, 32, 128, k)
        replica.enqueue(r, 0.0)
        tokens, queued = replica.backlog_tokens, k + 1
        size = -(-tokens // queued)
        size = -(-size // 128) * 128
        # asked twice, the same float as the arithmetic, remembered once per (tokens, queue)
        for _ in range(2):
            assert queue.backlog_seconds(replica) == tokens * cost.prefill_time(size, 0) / size
        seen.append((tokens, queued))
    assert list(queue._backlog_memo) == seen
    # full, it starts over rather than grow: one entry more than the bound leaves one
    queue._backlog_memo.update({(-i, 1): 0.0 for i in range(1, 4094)})
    assert len(queue._backlog_memo) == 4096
    replica.enqueue(Request("other", "o3", (("w:o", 400, 4),), 512, 32, 128, 3), 0.0)
    queue.backlog_seconds(replica)
    assert list(queue._backlog_memo) == [(replica.backlog_tokens, 4)]


def _tiny_cluster(price: str) -> tuple[SagaPolicy, list[Replica]]:
    """Two cpu-tiny replicas of the real benchmark's size (80 blocks of 128 tokens)."""
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    policy = SagaPolicy(CFG.model_copy(update={"backlog_price": price}))
    engine = EngineConfig(max_num_batched_tokens=4096, max_num_seqs=64)
    replicas = [
        Replica(i, engine, cost, policy, block_tokens=128, capacity_blocks=80)
        for i in range(2)
    ]
    policy.bind(PolicyContext(replicas=replicas, cost=cost, block_tokens=128))
    return policy, replicas


def test_a_short_queue_of_short_calls_keeps_a_workflow_home() -> None:
    """The workflow's 2,048-token context is cached on replica 0, where one other call's
    4,096-token prefill is queued (0.5 s of cpu-tiny's prefill): priced per token at a
    16k-token context that queue looks like 4.5 s, and the call left its KV for a full
    re-prefill on the idle replica; priced as a 4,096-token prefill, it stays."""
    runs: tuple[Run, ...] = (("w:a", 0, 16),)
    grown: tuple[Run, ...] = (("w:a", 0, 18),)
    chosen, backlogs = {}, {}
    for price in ("fixed", "queue"):
        policy, replicas = _tiny_cluster(price)
        first = CallInfo("a", "acme", "swe", "c0", 0, None, 2048, runs, 0.0, 0.0, None, False)
        policy.on_call_ready(first, 0.0)
        policy.on_call_finished(first, 0, 1.0)  # home: replica 0
        _cache(replicas[0].kv, runs)
        other = Request("other", "o", (("w:o", 0, 32),), 4096, 32, 128, 0)
        replicas[0].enqueue(other, 1.0)
        nxt = CallInfo("a", "acme", "swe", "c1", 1, "bash", 2304, grown, 1.5, 0.0, None,
                       False)
        policy.on_call_ready(nxt, 1.5)
        home, _ = policy.predictor.estimate_all(replicas, grown, 2304, 32.0)
        backlogs[price] = home.backlog
        chosen[price] = policy.place(nxt, 1.5)
        assert policy.steals == (chosen[price] != 0)
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    assert backlogs["queue"] == cost.prefill_time(4096, 0)
    assert backlogs["fixed"] == 4096 * Predictor(cost, 128).t_token
    assert chosen == {"fixed": 1, "queue": 0}
