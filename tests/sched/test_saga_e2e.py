"""End to end: SAGA against the paper's baseline on a hand-built agent workload."""

from __future__ import annotations

import math
import random

import pytest

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.metrics.summary import speedup
from saga.sched.policy import CallInfo
from saga.sched.registry import build_policy, list_policies
from saga.sim.simulator import SimResult, Simulation

BT = 64
SYSTEM = ("sys:swe", 4096)
ABLATIONS = ["saga-no-graph", "saga-no-steal", "saga-no-afs", "saga-no-retention",
             "saga-no-admission"]


def agent_workload(seed: int, count: int, rate: float) -> list[Workflow]:
    """Chains of calls; call k's prompt is the system prefix plus [[0, n_k]] blocks, and
    n_{k+1} = n_k + output blocks + tool-result blocks, so each call extends the last."""
    rng = random.Random(seed)
    out, t = [], 0.0
    tools = ("bash", "edit", "view")
    for w in range(count):
        t += rng.expovariate(rate)
        n = rng.randint(60, 250)  # first context: 4k-16k tokens
        calls = []
        for k in range(rng.randint(4, 16)):
            output = rng.randint(50, 600)
            tool = rng.choice(tools) if k else None
            gap = rng.lognormvariate(math.log(3.0), 0.8) if k else 0.0
            prompt = Prompt(SYSTEM[1] + n * BT, (SYSTEM,), ((0, n),))
            calls.append(Call(f"c{k}", prompt, output, (f"c{k - 1}",) if k else (), gap, tool))
            n += output // BT + rng.randint(5, 40)
        out.append(Workflow(f"w{w}", "acme", "swe-agent", t, tuple(calls), end_signal="explicit"))
    return out


def _tcts(result: SimResult) -> dict[str, float]:
    return {w.workflow: w.tct for w in result.workflows if w.finished_at >= 0}


def _run(policy: str, workflows: list[Workflow]) -> SimResult:
    return Simulation(get_cluster("small"), build_policy(policy), workflows, seed=0).run()


def test_every_saga_variant_is_registered() -> None:
    assert {"saga", *ABLATIONS} <= set(list_policies())


@pytest.fixture(scope="module")
def workload() -> list[Workflow]:
    return agent_workload(seed=1, count=120, rate=1.0)


@pytest.fixture(scope="module")
def affinity(workload: list[Workflow]) -> SimResult:
    return _run("vllm-affinity", workload)


def test_saga_beats_vllm_affinity_on_tct(
    workload: list[Workflow], affinity: SimResult
) -> None:
    saga = _run("saga", workload)
    assert len(_tcts(saga)) == len(workload)
    result = speedup(_tcts(affinity), _tcts(saga))
    assert result["geomean"] > 1.3, result
    assert result["ci_low"] > 1.0, result


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablations_finish_every_workflow(name: str, workload: list[Workflow]) -> None:
    result = _run(name, workload)
    assert len(_tcts(result)) == len(workload)
    assert result.policy == name


def test_tenant_accounts_track_the_slowdown_of_finished_workflows() -> None:
    policy = build_policy("saga")
    workflows = agent_workload(seed=3, count=12, rate=0.5)
    result = Simulation(get_cluster("small"), policy, workflows, seed=0).run()
    account = policy.fair.tenants["acme"]  # type: ignore[attr-defined]
    assert account.slowdown_n == len([w for w in result.workflows if w.finished_at >= 0]) == 12
    # TCT over calls-alone-plus-gaps: at least ~1 (the prediction is the cost model's)
    assert 0.9 <= account.slowdown < 20.0


def _first_call(workflow: str) -> CallInfo:
    return CallInfo(
        workflow=workflow, tenant="acme", agent="swe-agent", call_id="c0", index=0,
        tool=None, prompt_tokens=64 * 80, runs=(("s:sys", 0, 64), (f"w:{workflow}", 0, 16)),
        issued_at=0.0, workflow_arrival=0.0, slo=None, ends_workflow=False,
    )


def test_placement_finds_the_one_replica_up_and_says_when_none_is() -> None:
    cluster = get_cluster("h100-64-8b")
    sim = Simulation(cluster, build_policy("saga"), agent_workload(1, 1, 1.0), seed=0)
    assert len(sim.replicas) > 16  # placement samples candidates here
    for replica in sim.replicas:
        replica.up = False
    sim.replicas[37].up = True
    for k in range(20):  # whatever the sample, the only replica up is found
        call = _first_call(f"w{k}")
        sim.policy.on_call_ready(call, 0.0)
        assert sim.policy.place(call, 0.0) == 37
    sim.replicas[37].up = False
    call = _first_call("none")
    sim.policy.on_call_ready(call, 0.0)
    with pytest.raises(RuntimeError, match="no replica is up"):
        sim.policy.place(call, 0.0)
