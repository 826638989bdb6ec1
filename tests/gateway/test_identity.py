"""Workflow, agent and tool from what standard clients send (saga.gateway.identity)."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from saga.gateway.identity import identify, tool_before
from saga.wire.openai_api import BadRequest

SESSIONS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures" / "agent_sessions.json").read_text()
)
AGENTS = [name for name in SESSIONS if not name.startswith("_")]

_MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


@pytest.mark.parametrize(("headers", "body", "workflow", "source"), [
    ({"x-saga-workflow": "w1", "x-claude-code-session-id": "c"},
     {"prompt_cache_key": "k", "user": "u"}, "w1", "x-saga-workflow"),
    ({"x-claude-code-session-id": "c"}, {"prompt_cache_key": "k", "user": "u"},
     "cache:k", "prompt_cache_key"),
    ({"x-claude-code-session-id": "c"}, {"user": "u", "metadata": {"session_id": "m"}},
     "user:u", "user"),
    ({"x-claude-code-session-id": "c"}, {"metadata": {"conversation_id": "m", "x": 1}},
     "meta:m", "metadata.conversation_id"),
    ({"X-Claude-Code-Session-Id": "c", "x-session-affinity": "o", "session-id": "x"}, {},
     "session:c", "x-claude-code-session-id"),
    ({"x-session-affinity": "o", "session-id": "x"}, {}, "session:o", "x-session-affinity"),
    ({"session-id": "x", "session_id": "y"}, {}, "session:x", "session-id"),
    ({"session_id": "y", "x-session-id": "r"}, {}, "session:y", "session_id"),
    ({"x-session-id": "r"}, {"session_id": "b"}, "session:r", "x-session-id"),
    ({}, {"session_id": "b"}, "session:b", "session_id"),
    ({"x-saga-workflow": "  "}, {"user": " "}, None, "prefix"),
])
def test_workflow_precedence(headers: dict[str, str], body: dict[str, Any],
                             workflow: str | None, source: str) -> None:
    who = identify(headers, {"messages": _MSGS, **body})
    assert who.workflow_source == source
    if workflow is not None:
        assert who.workflow == workflow
    else:
        assert who.workflow.startswith("auto:") and len(who.workflow) == 5 + 16


def test_the_conversation_start_names_every_turn_of_one_conversation() -> None:
    system = {"role": "system", "content": "be brief"}
    first = identify({}, {"messages": [system, {"role": "user", "content": "q1"}]})
    later = identify({}, {"messages": [
        system, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}]})
    other = identify({}, {"messages": [system, {"role": "user", "content": "q9"}]})
    no_system = identify({}, {"messages": [{"role": "user", "content": "q1"}]})
    no_system_later = identify({}, {"messages": [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]})
    assert first.workflow == later.workflow != other.workflow
    assert no_system.workflow == no_system_later.workflow != first.workflow
    prompt = identify({}, {"prompt": "p" * 2000})
    assert prompt.workflow == identify({}, {"prompt": "p" * 1024 + "q" * 50}).workflow
    tokens = identify({}, {"prompt": [1, 2, 3]})
    assert tokens.workflow != identify({}, {"prompt": [4, 5, 6]}).workflow


@pytest.mark.parametrize(("headers", "body", "agent", "source"), [
    ({"x-saga-agent": "coder", "x-claude-code-session-id": "c"}, {}, "coder", "x-saga-agent"),
    ({"x-claude-code-session-id": "c"}, {}, "claude-code", "x-claude-code-session-id"),
    ({"session_id": "c", "originator": "codex_cli_rs"}, {}, "codex", "session_id"),
    ({"originator": "codex_cli_rs"}, {}, "codex", "originator"),
    ({"user-agent": "claude-cli/2.0.14 (external, cli)"}, {}, "claude-code", "user-agent"),
    ({"User-Agent": "opencode/0.15.2"}, {}, "opencode", "user-agent"),
    ({"user-agent": "OpenAI/Python 1.2"}, {"metadata": {"agent": "triage"}}, "triage",
     "metadata.agent"),
    ({"user-agent": "curl/8"}, {}, "default", "default"),
])
def test_agent_precedence(headers: dict[str, str], body: dict[str, Any], agent: str,
                          source: str) -> None:
    who = identify(headers, {"messages": _MSGS, **body})
    assert (who.agent, who.agent_source) == (agent, source)


def _assistant(*names: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{n}", "type": "function", "function": {"name": n, "arguments": "{}"}}
        for n in names]}


def _result(name: str, with_id: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "tool", "content": "ok"}
    if with_id:
        out["tool_call_id"] = f"call_{name}"
    return out


@pytest.mark.parametrize(("messages", "tool"), [
    (_MSGS, None),
    ([*_MSGS, _assistant("grep"), _result("grep")], "grep"),
    ([*_MSGS, _assistant("read", "bash"), _result("read"), _result("bash")], "read+bash"),
    ([*_MSGS, _assistant("read", "bash"), _result("bash"), _result("read")], "bash+read"),
    ([*_MSGS, _assistant("grep"), _result("grep", with_id=False)], "grep"),
    ([*_MSGS, _assistant("a", "b"), _result("x", with_id=False)], "tool"),
    ([*_MSGS, {"role": "function", "name": "legacy", "content": "ok"}], "legacy"),
    # a tool round, then the user speaks: a new turn, not a tool return
    ([*_MSGS, _assistant("grep"), _result("grep"), {"role": "user", "content": "more"}], None),
])
def test_tool_boundaries_from_the_messages(messages: list[dict[str, Any]],
                                           tool: str | None) -> None:
    assert tool_before({"messages": messages}) == tool
    assert identify({}, {"messages": messages}).tool == tool
    assert identify({"x-saga-tool": "mine"}, {"messages": messages}).tool == "mine"


def test_our_headers_are_checked_and_other_clients_values_are_hashed() -> None:
    with pytest.raises(BadRequest, match="x-saga-workflow"):
        identify({"x-saga-workflow": "x" * 300}, {"messages": _MSGS})
    with pytest.raises(BadRequest, match="x-saga-end"):
        identify({"x-saga-end": "maybe"}, {"messages": _MSGS})
    assert identify({"x-saga-end": "TRUE"}, {"messages": _MSGS}).ends
    long = identify({"x-claude-code-session-id": "s" * 300}, {"messages": _MSGS})
    assert long.workflow.startswith("session:h") and len(long.workflow) == 8 + 1 + 16
    odd = identify({}, {"messages": _MSGS, "user": "a\nb"})
    assert odd.workflow.startswith("user:h")


def session_calls(name: str) -> list[tuple[dict[str, str], dict[str, Any], str | None]]:
    """A recorded session as its agent sends it: per call the headers, the body and the
    tool that ran before it."""
    s = SESSIONS[name]
    messages: list[dict[str, Any]] = [{"role": "system", "content": s["system"]},
                                      {"role": "user", "content": s["user"]}]
    out: list[tuple[dict[str, str], dict[str, Any], str | None]] = [
        (dict(s["headers"]), {**s["body"], "messages": list(messages)}, None)]
    for k, step in enumerate(s["steps"]):
        calls = [{"id": f"call_{k}_{j}", "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for j, c in enumerate(step["tool_calls"])]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for call, result in zip(calls, step["results"], strict=True):
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        tool = "+".join(c["name"] for c in step["tool_calls"])
        out.append((dict(s["headers"]), {**s["body"], "messages": list(messages)}, tool))
    return out


@pytest.mark.parametrize("name", AGENTS)
def test_recorded_agent_sessions_are_one_workflow_of_one_agent(name: str) -> None:
    expected_agent = {"claude-code": "claude-code", "codex": "codex", "opencode": "opencode",
                      "openai-sdk-agent": "triage"}[name]
    seen = [identify(h, b) for h, b, _ in session_calls(name)]
    assert len({w.workflow for w in seen}) == 1
    assert not seen[0].workflow.startswith("auto:")
    assert {w.agent for w in seen} == {expected_agent}
    assert [w.tool for w in seen] == [tool for _, _, tool in session_calls(name)]
    assert not any(w.ends for w in seen)


# ---- through the gateway, with the openai client ------------------------------------------


async def _replay(with_headers: bool) -> tuple[list[tuple[str, int, str]], dict[str, Any]]:
    """The recorded sessions, interleaved one call at a time, through a gateway (policy
    saga) in front of two in-process emulator replicas, sent by ``openai``'s client;
    returns per call (agent, backend, retention kind) and the learned graphs."""
    import openai
    from aiohttp import web

    from saga.emulator.engine import Emulator
    from saga.emulator.server import build_app
    from saga.engine.cluster import get_cluster
    from saga.gateway.app import Gateway
    from saga.gateway.config import GatewayConfig
    from saga.gateway.server import HttpServer
    from saga.sched.decisions import Retention
    from saga.sched.view import CallView, ReplicaView

    emulator = Emulator(get_cluster("test-2"), 2, time_scale=50.0)
    clock = asyncio.create_task(emulator.loop.run_realtime())
    runners, ports = [], []
    for i in range(2):
        runner = web.AppRunner(build_app(emulator, i), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "test-2", "graph_sync_interval": 0,
        "backends": [{"url": f"http://127.0.0.1:{port}", "kind": "emulator"} for port in ports],
        "tenants": {"acme": {"keys": ["sk-acme"]}}, "admin_keys": ["sk-admin"],
    })
    gateway = Gateway(config)
    decisions: list[str] = []
    retention = gateway.policy.retention

    def recorded(view: ReplicaView, call: CallView, now: float) -> Retention:
        decision = retention(view, call, now)
        decisions.append(decision.kind)
        return decision

    gateway.policy.retention = recorded  # type: ignore[method-assign,assignment]
    server = HttpServer(gateway.handle, max_body=config.max_body_bytes)
    await gateway.start()
    await server.start("127.0.0.1", 0)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1",
                                api_key="sk-acme", max_retries=0, timeout=30)
    out: list[tuple[str, int, str]] = []
    try:
        sessions = {name: session_calls(name) for name in AGENTS}
        ids = {name: identify(*session_calls(name)[0][:2]) for name in AGENTS}
        for k in range(max(len(calls) for calls in sessions.values())):
            for name, calls in sessions.items():
                if k >= len(calls):
                    continue
                headers, body, tool = calls[k]
                extra = dict(headers)
                if with_headers:
                    extra.update({"x-saga-workflow": ids[name].workflow,
                                  "x-saga-agent": ids[name].agent})
                    if tool:
                        extra["x-saga-tool"] = tool
                    if k == len(calls) - 1:
                        extra["x-saga-end"] = "false"
                fields = {k2: v for k2, v in body.items() if k2 not in ("messages", "stream")}
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=body["messages"], max_tokens=8,
                    stream=bool(body.get("stream")), extra_headers=extra, extra_body=fields)
                reply = raw.parse()
                if inspect.isawaitable(reply):  # a whole answer is parsed asynchronously
                    reply = await reply
                if body.get("stream"):
                    async for _ in reply:  # type: ignore[union-attr]
                        pass
                assert raw.headers["x-saga-workflow"] == f"acme/{ids[name].workflow}"
                out.append((ids[name].agent, int(raw.headers["x-saga-backend"]), ""))
                await asyncio.sleep(0.02)
        graphs = gateway.graphs
        assert graphs is not None
        snapshot = graphs.snapshot()
    finally:
        await client.close()
        await server.close(grace=1.0)
        await gateway.stop()
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
    assert len(decisions) == len(out)
    return [(a, b, kind) for (a, b, _), kind in zip(out, decisions, strict=True)], snapshot


def _structure(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """What a graph learned, less the measured times (they follow the wall clock)."""
    return {agent: ({node: n["calls"] for node, n in g["nodes"].items()},
                    [(e["src"], e["dst"], e["count"]) for e in g["edges"]])
            for agent, g in snapshot.items()}


@pytest.mark.timeout(120)
def test_an_agent_session_with_no_saga_header_is_scheduled_as_with_headers() -> None:
    bare, bare_graphs = asyncio.run(_replay(with_headers=False))
    tagged, tagged_graphs = asyncio.run(_replay(with_headers=True))
    assert bare == tagged
    assert _structure(bare_graphs) == _structure(tagged_graphs)
    # the agents' graphs learned the tools of the recorded sessions
    assert any("Grep" in node for node in bare_graphs["acme/claude-code"]["nodes"])
