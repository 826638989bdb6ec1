"""The memory gate: FIFO admission bounded by the working set."""

from __future__ import annotations

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.gate import MAX_PREFIX_RUNS, MemoryGate, SharedPrefixes
from saga.sched.saga.policy import SagaPolicy
from saga.sim.simulator import Simulation
from saga.wire.prefix import text_runs


def wf(name: str, slo: float | None = None, agent: str = "a") -> WorkflowInfo:
    return WorkflowInfo(name, "t", agent, 0.0, slo)


def gate(capacity: float = 100_000, budget: float = 1.0) -> MemoryGate:
    return MemoryGate(capacity, budget, retry_after=2.0, prior_context=20_000)


def test_admits_while_the_working_set_fits_then_queues_in_order() -> None:
    g = gate()
    assert g.decide(wf("a"), 0).verdict == "admit"
    assert g.decide(wf("b"), 70_000).verdict == "admit"  # 70k + 20k <= 100k
    first = g.decide(wf("c"), 90_000)
    assert first.verdict == "defer" and first.retry_after == 2.0
    assert "1 workflows in the admission queue" in first.reason
    assert "exceeds 100,000" in first.reason
    assert g.decide(wf("d"), 90_000).verdict == "defer"
    # room again: d is not first in line, c is
    assert g.decide(wf("d"), 10_000).verdict == "defer"
    assert g.decide(wf("c"), 10_000).verdict == "admit"
    assert g.decide(wf("d"), 30_000).verdict == "admit"
    assert not g.waiting


def test_interactive_work_goes_ahead_of_best_effort() -> None:
    g = gate()
    for name in ("be1", "be2"):
        assert g.decide(wf(name), 95_000).verdict == "defer"
    assert g.decide(wf("int1", slo=3.0), 95_000).verdict == "defer"
    assert g.decide(wf("int2", slo=3.0), 95_000).verdict == "defer"
    assert list(g.waiting) == ["int1", "int2", "be1", "be2"]
    assert g.decide(wf("int1", slo=3.0), 0.0).verdict == "admit"


def test_an_empty_cluster_admits_even_a_workflow_larger_than_memory() -> None:
    g = gate(capacity=1_000)
    assert g.decide(wf("huge"), 0.0).verdict == "admit"


def test_expected_context_learns_from_first_calls() -> None:
    g = gate()
    swe = ("t", "swe")
    assert g.expected_context(swe) == 20_000
    g.observe_first_context(swe, 10_000)
    g.observe_first_context(swe, 30_000)
    assert g.expected_context(swe) == 20_000
    g.observe_first_context(swe, 50_000)
    assert g.expected_context(swe) == 30_000
    assert g.expected_context(("t", "other")) == 20_000
    # another tenant's agent of the same name is another agent
    assert g.expected_context(("u", "swe")) == 20_000 and not g.seen(("u", "swe"))


def test_forget_removes_a_rejected_workflow() -> None:
    g = gate()
    g.decide(wf("x", slo=2.0), 99_000)
    g.forget("x")
    assert not g.waiting


def test_a_withdrawn_workflow_no_longer_blocks_the_queue() -> None:
    g = gate()
    assert g.decide(wf("a"), 95_000).verdict == "defer"  # a heads the queue
    assert g.decide(wf("b"), 95_000).verdict == "defer"
    assert g.decide(wf("b"), 0.0).verdict == "defer"  # b is behind a, even with room
    g.forget("a")  # a's client gave up (SagaPolicy.on_admission_withdrawn)
    assert g.decide(wf("b"), 0.0).verdict == "admit"
    assert not g.waiting


def test_behind_answers_only_for_queued_workflows_not_first_in_line() -> None:
    g = gate()
    assert g.behind("a") is None  # not queued
    assert g.decide(wf("a"), 95_000).verdict == "defer"
    assert g.decide(wf("b"), 95_000).verdict == "defer"
    assert g.behind("a") is None  # first in line: must be asked properly
    later = g.behind("b")
    assert later is not None and later.verdict == "defer" and later.retry_after == 2.0
    assert later.reason == "memory gate: not first of 2 queued workflows"
    # the answer is kept per queue length, so it follows the queue as it grows
    assert g.decide(wf("c"), 95_000).verdict == "defer"
    third = g.behind("c")
    assert third is not None and third.reason == "memory gate: not first of 3 queued workflows"
    again = g.behind("b")
    assert again is not None and again.reason == "memory gate: not first of 3 queued workflows"


def test_an_unseen_agent_gets_at_most_cold_start_workflows_in_until_its_context_is_known() -> None:
    g = MemoryGate(1e9, 1.0, retry_after=2.0, prior_context=20_000, cold_start=2)
    assert g.decide(wf("a", agent="new"), 0.0, unplaced=0).verdict == "admit"  # empty cluster
    assert g.decide(wf("b", agent="new"), 20_000, unplaced=1).verdict == "admit"
    held = g.decide(wf("c", agent="new"), 40_000, unplaced=2)
    assert held.verdict == "defer" and held.retry_after == 2.0
    assert "no call of agent 'new' seen yet and 2 of its workflows admitted" in held.reason
    assert g.decide(wf("d", agent="old"), 40_000, unplaced=0).verdict == "defer"  # FIFO
    g.observe_first_context(("t", "new"), 50_000)  # a first call was placed: the context is known
    assert g.decide(wf("c", agent="new"), 90_000, unplaced=2).verdict == "admit"
    assert g.decide(wf("d", agent="old"), 140_000, unplaced=0).verdict == "admit"


def test_a_burst_of_an_unknown_agent_is_not_admitted_whole_on_the_prior() -> None:
    # 40 workflows at once, before any call: the prior (20k tokens) would let all in
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    policy = SagaPolicy(SagaConfig(gate_cold_start=4))
    Simulation(get_cluster("paper-a100-64"), policy, [dummy])
    burst = [WorkflowInfo(f"w{i}", "t", "swe", 0.0, None) for i in range(40)]
    verdicts = [policy.admit(w, 0.0).verdict for w in burst]
    assert verdicts == ["admit"] * 4 + ["defer"] * 36


def test_the_gate_counts_the_configured_share_of_the_host_tier() -> None:
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    spec = get_cluster("a100-8-70b")
    bt = dummy.block_tokens
    gpu = spec.replicas * spec.kv_capacity_blocks(bt) * bt
    host = spec.replicas * spec.host_capacity_blocks(bt) * bt
    assert host > 0
    for share in (0.0, 0.5):
        policy = SagaPolicy(SagaConfig(gate_host_share=share))
        Simulation(spec, policy, [dummy])
        assert policy.gate.capacity_tokens == gpu + share * host
        assert policy.gate.limit == policy.config.memory_budget * (gpu + share * host)


def test_room_admits_the_head_past_the_limit_but_keeps_the_order() -> None:
    g = gate()
    assert g.decide(wf("a"), 95_000).verdict == "defer"  # over the limit, no room
    assert g.decide(wf("b"), 95_000, room=True).verdict == "defer"  # b is behind a
    assert g.decide(wf("a"), 95_000, room=True).verdict == "admit"
    assert g.decide(wf("b"), 95_000, room=True).verdict == "admit"
    # room does not bypass the cold start of an agent never seen
    held = g.decide(wf("c", agent="new"), 95_000, unplaced=4, room=True)
    assert held.verdict == "defer" and "no call of agent 'new' seen yet" in held.reason


def test_the_work_conserving_gate_admits_past_the_limit_only_with_room() -> None:
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    for conserving in (False, True):
        policy = SagaPolicy(SagaConfig(memory_budget=1e-6, gate_work_conserving=conserving))
        Simulation(get_cluster("test-2"), policy, [dummy])
        policy.gate.observe_first_context("agent", 64)  # a small context: idle replicas fit it
        first, second = (WorkflowInfo(n, "t", "agent", 0.0, None) for n in "ab")
        assert policy.admit(first, 0.0).verdict == "admit"  # an empty cluster admits
        policy.homed_total = 1_000.0  # the first one's working set, past the tiny limit
        assert policy.admit(second, 0.0).verdict == ("admit" if conserving else "defer")


def test_best_effort_leaves_the_interactive_reserve_free_while_interactive_work_runs() -> None:
    g = MemoryGate(100_000, 1.0, retry_after=2.0, prior_context=20_000, interactive_reserve=0.2)
    assert g.limit_for(wf("be"), interactive_active=True) == 80_000
    assert g.limit_for(wf("be"), interactive_active=False) == 100_000
    assert g.limit_for(wf("i", slo=3.0), interactive_active=True) == 100_000
    # 65k + 20k: past 80k for best effort; an interactive arrival is admitted ahead of it
    flood = g.decide(wf("be"), 65_000, interactive_active=True)
    assert flood.verdict == "defer"
    assert "exceeds 80,000 (1 x KV capacity less the interactive reserve)" in flood.reason
    assert g.decide(wf("i", slo=3.0), 65_000, interactive_active=True).verdict == "admit"
    assert list(g.waiting) == ["be"]
    # no interactive work in flight: the whole limit is best effort's
    assert g.decide(wf("be"), 65_000, interactive_active=False).verdict == "admit"


def test_shared_prefixes_count_each_prefix_once_over_its_users() -> None:
    shared = SharedPrefixes(block_tokens=16)
    shared.hold("w1", (("s:sys", 0, 10), ("w:w1", 0, 5)))
    assert shared.overcount == 0  # one user: its copy is the cache's
    shared.hold("w2", (("s:sys", 0, 10), ("w:w2", 0, 7)))
    assert shared.overcount == 160  # w2's 10 blocks are the one copy's again
    shared.hold("w2", (("s:sys", 0, 10), ("w:w2", 0, 9)))  # its next call: same prefix
    assert shared.overcount == 160
    # a user of part of the prefix: the cache holds the longest copy, the rest is over
    shared.hold("w3", (("s:sys", 0, 4), ("s:tools", 0, 2)))
    assert shared.overcount == 160 + 64
    shared.drop("w1")
    assert shared.overcount == 64
    shared.drop("w1")  # twice: nothing more
    shared.drop("w2")
    assert shared.overcount == 0
    shared.hold("w4", (("w:w4", 0, 50),))  # no shared run: nothing to count once
    shared.drop("w3")
    assert shared.overcount == 0


def test_shared_prefixes_are_found_in_the_gateways_hashed_blocks() -> None:
    """The gateway names each block by a hash chained over its prefix (saga.wire.prefix):
    two prompts with the same system prompt send the same leading block names, and those
    count once, with no ``s:`` namespace."""
    block_tokens = 64
    system = "You are a coding agent. " * 200  # 4,800 characters: 18 full 256-char blocks
    one = text_runs(system + "Fix the failing test in parser.py please. " * 40, block_tokens)
    two = text_runs(system + "Add a --verbose flag to the CLI tool now. " * 40, block_tokens)
    common = next(i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b)
    assert common == 18
    shared = SharedPrefixes(block_tokens)
    shared.hold("w1", one)
    shared.hold("w2", two)
    assert shared.overcount == common * block_tokens
    shared.drop("w1")
    assert shared.overcount == 0


def test_shared_prefixes_track_at_most_the_leading_runs_of_a_prompt() -> None:
    shared = SharedPrefixes(block_tokens=1)
    long = tuple((f"h:{i}", 0, 1) for i in range(MAX_PREFIX_RUNS + 100))
    shared.hold("w1", long)
    shared.hold("w2", long)
    assert shared.overcount == MAX_PREFIX_RUNS  # the runs past the bound are not tracked


def test_the_gate_admits_a_workflow_that_fits_once_the_shared_prefix_counts_once() -> None:
    """Two placed workflows of 100 shared + 10 private blocks each: counted per workflow
    their working set is 220 blocks and a third (110 expected) passes a 300-block limit;
    counted once, 120 blocks, and it fits."""
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    verdicts = {}
    for once in (False, True):
        policy = SagaPolicy(SagaConfig(gate_shared_once=once, predict_end=False,
                                       gate_growth="none"))
        Simulation(get_cluster("test-2"), policy, [dummy])
        bt = policy.ctx.block_tokens
        policy.gate.capacity_tokens = 300 * bt / policy.config.memory_budget
        for name in ("w1", "w2"):
            assert policy.admit(WorkflowInfo(name, "t", "agent", 0.0, None), 0.0).verdict == "admit"
            call = CallInfo(
                workflow=name, tenant="t", agent="agent", call_id=name + "c0", index=0,
                tool=None, prompt_tokens=110 * bt, runs=(("s:sys", 0, 100), ("w:" + name, 0, 10)),
                issued_at=0.0, workflow_arrival=0.0, slo=None, ends_workflow=False,
            )
            policy.on_call_ready(call, 0.0)
            policy.place(call, 0.0)
        assert policy._working_set() == (120 if once else 220) * bt
        third = policy.admit(WorkflowInfo("w3", "t", "agent", 0.0, None), 0.0)
        verdicts[once] = third.verdict
    assert verdicts == {False: "defer", True: "admit"}


def test_a_saturated_cluster_holds_the_head_even_under_the_limit() -> None:
    g = gate()
    held = g.decide(wf("a"), 10_000, saturated=True)  # 10k + 20k fits the 100k limit
    assert held.verdict == "defer"
    assert "calls wait in the engines' queues (saturated); 1 workflows" in held.reason
    assert g.decide(wf("b"), 10_000).verdict == "defer"  # b is behind a
    assert g.decide(wf("a"), 10_000).verdict == "admit"  # no longer saturated
    assert g.decide(wf("b"), 10_000).verdict == "admit"
    # an empty cluster admits whatever the queues say
    assert g.decide(wf("c"), 0.0, saturated=True).verdict == "admit"


def test_the_gate_is_saturated_when_waiting_calls_average_the_threshold() -> None:
    from saga.engine.replica import Request

    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    for threshold, expected in ((None, "admit"), (1.5, "defer"), (2.0, "admit")):
        policy = SagaPolicy(SagaConfig(gate_saturation_waiting=threshold))
        sim = Simulation(get_cluster("test-2"), policy, [dummy])
        policy.gate.observe_first_context(("t", "agent"), 64)
        first, second = (WorkflowInfo(n, "t", "agent", 0.0, None) for n in "ab")
        assert policy.admit(first, 0.0).verdict == "admit"  # an empty cluster admits
        policy.homed_total = 1_000.0  # the first one's working set: far under the limit
        # three calls wait over the two replicas: 1.5 a replica
        waiting = [sim.replicas[0].waiting, sim.replicas[0].waiting, sim.replicas[1].waiting]
        for seq, queue in enumerate(waiting):
            queue.append(Request(f"w{seq}", "c0", (), 64, 1, 16, seq))
        assert policy.admit(second, 0.0).verdict == expected, threshold


def test_the_gate_counts_the_growth_the_config_asks_for_until_the_workflow_leaves() -> None:
    """One placed workflow of 110 blocks, on the graph's priors (continue 0.5: one more call
    expected, of 1000 appended and 300 output tokens): the gate counts its context alone,
    plus its next call's growth, or plus its expected remaining tokens; the growth leaves
    the count with the workflow."""
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    counted = {}
    for growth in ("none", "next", "rest"):
        policy = SagaPolicy(SagaConfig(gate_growth=growth, predict_end=False,  # type: ignore[arg-type]
                                       prior_continue=0.5, prior_growth_tokens=1000,
                                       prior_output_tokens=300))
        Simulation(get_cluster("test-2"), policy, [dummy])
        bt = policy.ctx.block_tokens
        info = WorkflowInfo("w1", "t", "agent", 0.0, None)
        assert policy.admit(info, 0.0).verdict == "admit"
        call = CallInfo(
            workflow="w1", tenant="t", agent="agent", call_id="c0", index=0, tool=None,
            prompt_tokens=110 * bt, runs=(("w:w1", 0, 110),), issued_at=0.0,
            workflow_arrival=0.0, slo=None, ends_workflow=False,
        )
        policy.on_call_ready(call, 0.0)
        policy.place(call, 0.0)
        counted[growth] = policy._working_set() - 110 * bt
        policy.on_workflow_finished(info, 1.0)
        assert policy._working_set() == 0 and policy.growth.total == 0
    assert counted == {"none": 0, "next": 1000, "rest": 1300}


def test_adaptive_lifo_admits_the_newest_once_the_first_in_line_has_waited_the_threshold() -> None:
    g = MemoryGate(100_000, 1.0, retry_after=2.0, prior_context=20_000, lifo_after=60.0)
    assert g.decide(wf("a"), 90_000, now=0.0).verdict == "defer"
    assert g.decide(wf("b"), 90_000, now=10.0).verdict == "defer"
    assert g.decide(wf("c"), 90_000, now=20.0).verdict == "defer"
    # before 60 s: first in line, as FIFO
    assert g.head(59.9) == "a"
    assert g.behind("a", 59.9) is None and g.behind("c", 59.9) is not None
    assert g.decide(wf("c"), 10_000, now=59.9).verdict == "defer"
    # a has waited 60 s: the newest goes first, and only it
    assert g.head(60.0) == "c"
    assert g.behind("a", 60.0) is not None and g.behind("c", 60.0) is None
    assert g.decide(wf("a"), 10_000, now=60.0).verdict == "defer"
    assert g.decide(wf("c"), 10_000, now=60.0).verdict == "admit"
    assert list(g.waiting) == ["a", "b"]
    # a newcomer is the newest: it goes ahead of b while a still waits past 60 s
    assert g.decide(wf("d"), 10_000, now=61.0).verdict == "admit"
    assert g.decide(wf("b"), 10_000, now=62.0).verdict == "admit"
    assert g.decide(wf("a"), 10_000, now=63.0).verdict == "admit"
    assert not g.waiting


def test_adaptive_lifo_keeps_interactive_work_first_in_arrival_order() -> None:
    g = MemoryGate(100_000, 1.0, retry_after=2.0, prior_context=20_000, lifo_after=0.0)
    assert g.decide(wf("be"), 95_000, now=0.0).verdict == "defer"
    assert g.decide(wf("i1", slo=3.0), 95_000, now=1.0).verdict == "defer"
    assert g.decide(wf("i2", slo=3.0), 95_000, now=2.0).verdict == "defer"
    assert g.head(100.0) == "i1"
    assert g.decide(wf("i1", slo=3.0), 0.0, now=100.0).verdict == "admit"
    assert g.decide(wf("i2", slo=3.0), 0.0, now=100.0).verdict == "admit"
    assert g.head(100.0) == "be"


def test_without_a_time_or_a_threshold_the_gate_is_first_in_first_out() -> None:
    g = MemoryGate(100_000, 1.0, retry_after=2.0, prior_context=20_000, lifo_after=60.0)
    g.decide(wf("a"), 95_000, now=0.0)
    g.decide(wf("b"), 95_000, now=1.0)
    assert g.head() == "a" and g.head(1_000.0) == "b"
    fifo = gate()
    fifo.decide(wf("a"), 95_000, now=0.0)
    fifo.decide(wf("b"), 95_000, now=1.0)
    assert fifo.head(1_000.0) == "a"


def test_sagas_gate_takes_the_lifo_threshold_from_its_config() -> None:
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    for after in (300.0, None, 60.0):
        policy = SagaPolicy(SagaConfig() if after == 300.0 else SagaConfig(gate_lifo_after=after))
        Simulation(get_cluster("a100-8-70b"), policy, [dummy])
        assert policy.gate.lifo_after == after
