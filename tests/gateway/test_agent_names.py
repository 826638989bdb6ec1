"""Agent names are bounded per tenant: a client that sends a new agent name per call
cannot grow the gateway's graphs and statistics without limit (saga.gateway.agent_names)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from inproc import Get, Post, chat, fake_openai
from pydantic import ValidationError
from saga_procs import HOST

from saga.gateway.agent_names import CATCH_ALL, AgentNames
from saga.gateway.config import GatewayConfig


def test_names_past_the_limit_fold_into_the_catch_all_and_are_counted() -> None:
    names = AgentNames(limit=2)
    got = [names.resolve("alpha", a) for a in ("coder", "planner", "x1", "coder", "x2")]
    assert got == ["coder", "planner", CATCH_ALL, "coder", CATCH_ALL]
    assert names.count("alpha") == 2
    assert dict(names.folded) == {"alpha": 2}


def test_each_tenant_has_its_own_limit() -> None:
    names = AgentNames(limit=1)
    assert names.resolve("alpha", "a") == "a"
    assert names.resolve("alpha", "b") == CATCH_ALL
    assert names.resolve("beta", "b") == "b"  # alpha's overflow takes nothing from beta
    assert names.tenants() == ["alpha", "beta"]
    assert dict(names.folded) == {"alpha": 1}


def test_the_limit_is_validated_with_a_default() -> None:
    backends = [{"url": "http://127.0.0.1:1", "kind": "emulator"}]
    assert GatewayConfig.model_validate({"backends": backends}).max_agents_per_tenant == 256
    with pytest.raises(ValidationError, match="max_agents_per_tenant"):
        GatewayConfig.model_validate({"backends": backends, "max_agents_per_tenant": 0})
    with pytest.raises(ValueError, match="limit"):
        AgentNames(0)


def _metric(text: str, line_start: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(line_start):
            return line.rsplit(" ", 1)[1]
    return None


@pytest.mark.timeout(60)
def test_a_client_sending_a_new_agent_name_per_call_grows_no_table() -> None:
    from saga.gateway.app import Gateway

    async def main() -> tuple[list[str], list[int], str]:
        runner, url = await fake_openai(HOST)
        config: dict[str, Any] = {
            "policy": "saga", "cluster": "test-2", "max_agents_per_tenant": 3,
            "graph_sync_interval": 0, "admin_keys": ["adm"],
            "backends": [{"url": url, "kind": "openai"}],
            "tenants": {"alpha": {"keys": ["ka"]}, "beta": {"keys": ["kb"]}},
        }
        gateway = Gateway(GatewayConfig.model_validate(config))
        await gateway.start()
        statuses = []
        try:
            calls = [("ka", f"agent-{i}") for i in range(10)] + [("kb", "agent-9")]
            for i, (key, agent) in enumerate(calls):
                response = await gateway.handle(Post(  # type: ignore[arg-type]
                    "/v1/chat/completions", chat(f"call {i}"),
                    {"Authorization": f"Bearer {key}", "x-saga-agent": agent,
                     "x-saga-workflow": f"w{i}", "x-saga-end": "1"}))
                statuses.append(response.status)
            metrics = await gateway.handle(Get(  # type: ignore[arg-type]
                "/metrics", {"Authorization": "Bearer adm"}))
            text = metrics.body.decode()  # type: ignore[union-attr]
            graphs = gateway.graphs
            assert graphs is not None
            labels = sorted(graphs.snapshot())
        finally:
            await gateway.stop()
            await runner.cleanup()
        return labels, statuses, text

    labels, statuses, text = asyncio.run(main())
    assert statuses == [200] * 11  # a folded call is served as any other
    assert labels == ["alpha/(other)", "alpha/agent-0", "alpha/agent-1", "alpha/agent-2",
                      "beta/agent-9"]
    assert _metric(text, 'saga_agent_names_folded_total{tenant="alpha"}') == "7"
    assert _metric(text, 'saga_agent_names_folded_total{tenant="beta"}') is None
    assert _metric(text, 'saga_agent_names{tenant="alpha"}') == "3"
    assert _metric(text, 'saga_agent_names{tenant="beta"}') == "1"
