"""``NAME+gate`` admits exactly as SAGA's memory gate; ``+priority`` orders as vLLM's
``priority`` scheduling policy."""

from __future__ import annotations

import heapq
import random

import pytest

from saga.engine.cluster import get_cluster
from saga.engine.kvcache import Run
from saga.engine.replica import Replica, Request
from saga.sched.gated import GatedPolicy
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.registry import build_policy, list_policies
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy

BT = 64


def bind(policy: Policy, replicas: int = 2, capacity: int = 64) -> list[Replica]:
    cluster = get_cluster("test-2")
    cost = cluster.cost_model()
    built = [
        Replica(i, cluster.engine, cost, policy, block_tokens=BT, capacity_blocks=capacity,
                eviction=policy.eviction_order(i))
        for i in range(replicas)
    ]
    policy.bind(PolicyContext(built, cost, BT, rng=random.Random(0)))
    return built


#: How the workflows of a script end, and whether some have a service level:
#: "marked": the client sends the end marker on the last call;
#: "idle": no marker, the runtime sees the end after an idle timeout (the gate predicts it);
#: "slo": idle ends, and a third of the workflows are an interactive tenant's.
# paused: idle ends, and every third workflow's first tool runs PAUSE seconds
ENDS = ("marked", "idle", "slo", "paused")
PAUSE = 60.0
IDLE_TIMEOUT = 30.0

Script = list[tuple[str, float, str, list[int], float | None]]


def script(seed: int, ends: str = "marked") -> Script:
    """Workflows: (id, arrival, agent, prompt blocks of each call, growing, SLO)."""
    rng = random.Random(seed)
    flows = []
    for i in range(40):
        first = rng.randint(6, 60)
        calls = [first + 20 * k for k in range(rng.randint(1, 5))]
        slo = 3.0 if ends == "slo" and i % 3 == 0 else None
        flows.append((f"w{i}", i * 0.3, rng.choice(["coder", "web"]), calls, slo))
    return flows


def drive(policy: Policy, seed: int, ends: str = "marked") -> list[tuple[float, str, str]]:
    """Run the same arrivals and calls through ``policy``'s hooks as a runtime would
    (a deferred workflow retries after ``retry_after``; a call runs 1.5 s, its tool
    0.5 s; an unmarked workflow is seen ended ``IDLE_TIMEOUT`` after its last call) and
    return every admission verdict in order."""
    replicas = bind(policy, capacity=128)
    flows = {wid: (arrival, agent, calls, slo)
             for wid, arrival, agent, calls, slo in script(seed, ends)}
    events: list[tuple[float, int, str, str, int]] = []
    order = iter(range(1_000_000))
    for wid, (arrival, _, _, _) in flows.items():
        heapq.heappush(events, (arrival, next(order), "arrive", wid, 0))
    verdicts: list[tuple[float, str, str]] = []
    placed: dict[tuple[str, int], tuple[CallInfo, int]] = {}
    while events:
        now, _, kind, wid, k = heapq.heappop(events)
        arrival, agent, calls, slo = flows[wid]
        tenant = "chat" if slo is not None else "t"
        info = WorkflowInfo(wid, tenant, agent, arrival, slo)
        last = k == len(calls) - 1
        if kind == "arrive":
            decision = policy.admit(info, now)
            verdicts.append((now, wid, decision.verdict))
            if decision.verdict == "defer":
                heapq.heappush(events, (now + decision.retry_after, next(order), kind, wid, 0))
            else:
                heapq.heappush(events, (now, next(order), "ready", wid, 0))
        elif kind == "ready":
            runs: tuple[Run, ...] = (("s:sys", 0, 4), ("w:" + wid, 0, calls[k]))
            call = CallInfo(
                workflow=wid, tenant=tenant, agent=agent, call_id=f"c{k}", index=k,
                tool="bash" if k else None, prompt_tokens=(4 + calls[k]) * BT, runs=runs,
                issued_at=now, workflow_arrival=arrival, slo=slo,
                ends_workflow=last and ends == "marked",
                # the last response ends the turn; the others invoke a tool
                turn_ended=last,
            )
            policy.on_call_ready(call, now)
            placed[(wid, k)] = (call, policy.place(call, now))
            heapq.heappush(events, (now + 1.5, next(order), "finish", wid, k))
        elif kind == "finish":
            call, index = placed.pop((wid, k))
            request = Request(wid, call.call_id, call.runs, call.prompt_tokens, 1000, BT,
                              next(order), info=call)
            request.generated = 1000
            policy.retention(replicas[index], request, now)
            policy.on_call_finished(call, index, now)
            if not last:
                paused = ends == "paused" and k == 0 and int(wid[1:]) % 3 == 0
                tool = PAUSE if paused else 0.5
                heapq.heappush(events, (now + tool, next(order), "ready", wid, k + 1))
            elif ends == "marked":
                policy.on_workflow_finished(info, now)
            else:
                heapq.heappush(events, (now + IDLE_TIMEOUT, next(order), "idle", wid, k))
        else:  # idle: the runtime's timeout says the workflow ended
            policy.on_workflow_finished(info, now)
    return verdicts


@pytest.mark.parametrize("base", ["vllm-affinity", "sglang", "throughput", "llm-d", "dynamo"])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("ends", ENDS)
def test_a_gated_baseline_admits_exactly_as_sagas_gate(base: str, seed: int, ends: str) -> None:
    gated = build_policy(base + "+gate")
    assert isinstance(gated, GatedPolicy)
    theirs = drive(gated, seed, ends)
    # SAGA's gate alone: its SLO admission is SAGA's, not the gate's (with no SLO in play
    # it admits everything, so there SAGA as deployed is compared), without the pause in a
    # tool, which the +gate variants do not take
    config = SagaConfig(admission=ends != "slo", gate_pause_quantile=None)
    ours = drive(SagaPolicy(config), seed, ends)
    assert theirs == ours
    assert any(v == "defer" for _, _, v in ours)  # the gate did bind


def test_the_gate_stops_counting_a_silent_workflow_at_its_predicted_end() -> None:
    """With idle ends, SAGA's gate predicts them and admits sooner than a gate that counts
    every workflow until the runtime's idle timeout: the +gate variant does the same."""
    never = SagaConfig(predict_end=False)
    for seed in (1, 2, 3):
        predicted = drive(SagaPolicy(SagaConfig(admission=False)), seed, "idle")
        waited = drive(SagaPolicy(never.model_copy(update={"admission": False})), seed, "idle")
        assert predicted != waited
        gated = build_policy("vllm-affinity+gate")
        assert drive(gated, seed, "idle") == predicted


def test_the_gate_keeps_the_interactive_reserve_while_slo_work_is_in_flight() -> None:
    """The reserve binds on the SLO script: without it SAGA's gate admits otherwise."""
    # the script's shared prefix counted per workflow, so that its working set reaches the
    # reserve (counted once, it stays below the reserve's share of this limit)
    no_reserve = SagaConfig(admission=False, gate_interactive_reserve=0.0, gate_shared_once=False)
    with_reserve = SagaConfig(admission=False, gate_shared_once=False)
    differs = [drive(SagaPolicy(no_reserve), s, "slo") != drive(SagaPolicy(with_reserve), s, "slo")
               for s in (1, 2, 3)]
    assert any(differs)


def test_a_gated_policy_keeps_the_inner_policys_decisions() -> None:
    gated = build_policy("sglang+gate")
    assert isinstance(gated, GatedPolicy)
    assert gated.name == "sglang+gate"
    assert type(gated).static_order == type(gated.inner).static_order
    assert gated.router is gated.inner.router


def test_gate_variants_are_listed_and_built_by_name() -> None:
    names = list_policies()
    for base in ("vllm-rr", "vllm-affinity", "vllm-least-loaded", "sglang", "throughput",
                 "llm-d", "dynamo", "autellix", "continuum", "infercept", "kvflow"):
        assert base + "+gate" in names
    assert "belady+gate" not in names  # offline bounds are not listed
    assert build_policy("belady+gate").offline
    with pytest.raises(Exception, match="unknown policy"):
        build_policy("saga+gate")


# ---- vLLM's priority scheduling ------------------------------------------------------------
def test_vllm_priority_serves_interactive_first_then_arrival_preempting_best_effort() -> None:
    policy = build_policy("vllm-affinity+priority")
    (replica,) = bind(policy, replicas=1)

    def req(wid: str, slo: float | None, at: float) -> Request:
        call = CallInfo(
            workflow=wid, tenant="t", agent="a", call_id="c0", index=0, tool=None,
            prompt_tokens=BT, runs=(("w:" + wid, 0, 1),), issued_at=at, workflow_arrival=at,
            slo=slo, ends_workflow=True,
        )
        r = Request(wid, "c0", call.runs, BT, 16, BT, int(at * 10), info=call)
        r.enqueued_at = at
        return r

    calls = [req("be-early", None, 1.0), req("chat-late", 3.0, 3.0),
             req("be-late", None, 2.0), req("chat-early", 3.0, 2.5)]
    ordered = sorted(calls, key=lambda r: policy.queue_key(replica, r, 5.0))
    # priority 0 (an SLO) before 1, then arrival: the engine preempts the last
    assert [r.workflow for r in ordered] == ["chat-early", "chat-late", "be-early", "be-late"]
    fcfs = build_policy("vllm-affinity")
    by_arrival = sorted(calls, key=lambda r: fcfs.queue_key(replica, r, 5.0))
    assert [r.workflow for r in by_arrival] == ["be-early", "be-late", "chat-early", "chat-late"]


def test_a_gated_baseline_keeps_counting_a_workflow_paused_in_a_tool() -> None:
    """SAGA's gate stops counting a workflow whose tool runs past ``gate_pause_quantile`` of
    the learned gaps (saga/ends.py ``pause_wait``) and so admits sooner; the +gate variants
    keep SAGA's gate without that rule (it made them slower: their KV is not kept for the
    return), admitting exactly as SAGA's gate with ``gate_pause_quantile`` None."""
    for seed in (1, 2, 3):
        paused = drive(SagaPolicy(SagaConfig(admission=False)), seed, "paused")
        counted = drive(SagaPolicy(SagaConfig(admission=False, gate_pause_quantile=None)),
                        seed, "paused")
        assert paused != counted
        assert drive(build_policy("llm-d+gate"), seed, "paused") == counted
