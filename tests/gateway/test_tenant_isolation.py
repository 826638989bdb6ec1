"""One tenant's traffic cannot change another's learned graphs or decisions.

Agent names are the clients' to choose: a tenant that floods calls under another
tenant's agent name learns a graph of its own (saga.sched.saga.graph.GraphStore is keyed
by tenant and agent, as are the memory gate's first-context means)."""

from __future__ import annotations

import json

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.gateway.view import GatewayCall
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import GraphStore, Observation
from saga.sched.view import CallInfo, WorkflowInfo
from saga.wire.prefix import text_runs

BLOCK = 16


def _gateway() -> Gateway:
    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "test-2", "block_tokens": BLOCK, "graph_sync_interval": 0,
        "backends": [{"url": "http://127.0.0.1:1", "kind": "emulator"},
                     {"url": "http://127.0.0.1:2", "kind": "emulator"}],
        "tenants": {"alpha": {"keys": ["ka"]}, "beta": {"keys": ["kb"]}},
    })
    return Gateway(config)  # binds the policy to its views; no backend is called


def _run_workflow(gw: Gateway, tenant: str, name: str, tools: list[str], start: float,
                  gap: float, growth: int, log: list[tuple[str, int, str]] | None) -> float:
    """A workflow's calls one after another through the policy's hooks and the views, as
    the gateway's call pipeline asks them; returns the time it ended."""
    policy = gw.policy
    info = WorkflowInfo(f"{tenant}/{name}", tenant, "coder", start, None)
    assert policy.admit(info, start).verdict == "admit"
    now = start
    text = f"[{tenant} {name}] " * 40
    for k, tool in enumerate([None, *tools]):
        text += f"<{tool} {k}> " * growth
        call = CallInfo(workflow=info.workflow, tenant=tenant, agent="coder", call_id=str(k),
                        index=k, tool=tool, prompt_tokens=len(text) // 4,
                        runs=text_runs(text, BLOCK), issued_at=now, workflow_arrival=start,
                        slo=None, ends_workflow=k == len(tools))
        policy.on_call_ready(call, now)
        index = policy.place(call, now)
        view = gw.views[index]
        request = GatewayCall(call, 16, BLOCK, k, now)
        view.kv.add(call.runs)
        assert view.try_start(request, now)
        now += 0.5
        view.finish(request, now, lambda waiting: True)
        policy.on_call_finished(call, index, now)
        decision = policy.retention(view, request, now)
        view.note_retention(call.workflow, decision, now)
        if log is not None:
            log.append((call.workflow, index, decision.kind))
        now += gap
    policy.on_workflow_finished(info, now)
    return now


def _alpha(gw: Gateway, start: float) -> tuple[list[tuple[str, int, str]], str]:
    """Tenant alpha's four workflows of agent ``coder``: its placements, retention
    decisions and learned graph."""
    log: list[tuple[str, int, str]] = []
    t = start
    for w in range(4):
        t = _run_workflow(gw, "alpha", f"a{w}", ["grep", "read"], t, 2.0, 20, log)
    graphs = gw.graphs
    assert graphs is not None
    return log, json.dumps(graphs.get("coder", "alpha").snapshot(), sort_keys=True)


def _flood(gw: Gateway, tenant: str) -> float:
    t = 0.0
    for w in range(30):  # long workflows of another shape, under the same agent name
        t = _run_workflow(gw, tenant, f"b{w}", ["bash"] * 8, t, 40.0, 200, None)
    return t


def test_a_look_alike_agent_flood_leaves_another_tenants_graph_and_placements() -> None:
    alone = _alpha(_gateway(), 100_000.0)

    flooded_gw = _gateway()
    _flood(flooded_gw, "beta")
    flooded = _alpha(flooded_gw, 100_000.0)
    assert flooded == alone
    graphs = flooded_gw.graphs
    assert graphs is not None
    assert set(graphs.snapshot()) == {"alpha/coder", "beta/coder"}

    # the control: the same flood from alpha's own key does change alpha's graph
    own_gw = _gateway()
    _flood(own_gw, "alpha")
    assert _alpha(own_gw, 100_000.0)[1] != alone[1]


def test_graph_observations_carry_their_tenant_across_gateways() -> None:
    sent: list[Observation] = []
    here = GraphStore(SagaConfig(), sink=sent.append)
    here.get("coder", "alpha").observe_transition("^#0", "grep#1", 1.5, 40)
    here.get("coder").observe_end("^#0")
    rows = json.loads(json.dumps([o.to_row() for o in sent]))
    assert rows == [["t", "coder", "^#0", "grep#1", 1.5, 40, "alpha"], ["e", "coder", "^#0"]]
    there = GraphStore(SagaConfig())
    assert there.apply(Observation.from_row(r) for r in rows) == 2
    assert set(there.snapshot()) == {"alpha/coder", "coder"}
    assert there.get("coder", "alpha").snapshot() == here.get("coder", "alpha").snapshot()
    assert there.get("coder", "beta").observations == 0
