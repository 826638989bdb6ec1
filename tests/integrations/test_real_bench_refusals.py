"""`saga bench real` counts refusals fairly: a workflow the gate holds waits as long as an
agent client would, and a call refused, failed or given up on fails its session, which
ends there (no engines: a stand-in server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from saga.bench.real import RealBench, gateway_config
from saga.integrations.replay import (
    ReplayCall,
    ReplayResult,
    ReplayWorkflow,
    replay,
    sim_workflows,
)


def test_the_gateway_holds_a_deferred_workflow_as_long_as_the_client_waits() -> None:
    bench = RealBench()
    config = gateway_config(bench, ["http://127.0.0.1:1", "http://127.0.0.1:2"], "saga",
                            "cpu-tiny")
    # the gateway's default (30 s) would answer 429 to sessions the memory gate queues
    assert config.max_defer == bench.request_timeout == 300.0
    assert not config.sticky_sessions
    assert [b.kind for b in config.backends] == ["vllm", "vllm"]


def _workflow(name: str, calls: int) -> ReplayWorkflow:
    return ReplayWorkflow(name, 0.0, tuple(ReplayCall(f"{name} {i}", 1, 0.0)
                                           for i in range(calls)))


def test_a_refused_or_abandoned_call_fails_its_session_which_ends_there() -> None:
    asked: list[str] = []
    never = asyncio.Event()

    async def chat(request: web.Request) -> web.Response:
        workflow = request.headers["x-saga-workflow"]
        asked.append(workflow)
        if workflow == "refused":
            return web.json_response({"error": "workflow deferred"}, status=429)
        if workflow == "hung":
            await never.wait()  # the client's timeout ends it
        headers = {"x-saga-backend": "1"}
        body = await request.json()
        if body["messages"][0]["content"] == "ok 0":  # held at the gateway's door
            headers["x-saga-admission"] = "deferred 2.500s: memory gate: working set ..."
        return web.json_response({"choices": []}, headers=headers)

    async def run() -> ReplayResult:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        try:
            result = await replay(f"http://{host}:{port}",
                                  [_workflow("ok", 3), _workflow("refused", 3),
                                   _workflow("hung", 3)], timeout=5.0)
        finally:
            await runner.cleanup()
        return result

    result = asyncio.run(run())
    assert result.failed == {"refused", "hung"}
    assert set(result.tct) == {"ok"}
    # each failed session stopped at its first call: 3 + 1 + 1 calls, 2 of them errors
    assert (result.calls, result.errors) == (5, 2)
    assert sorted(asked) == ["hung", "ok", "ok", "ok", "refused"]
    assert result.deferred == {"ok": 2.5}


def test_the_simulated_sessions_say_their_end_as_the_replay_does(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    workflows = sim_workflows([_workflow("a", 2), _workflow("b", 1)],
                              tmp_path / "tokenizer.json", block_tokens=4)
    # the replay sends x-saga-end on each session's last call: the simulated policy must
    # learn the end then too, not after the idle timeout (else SAGA's memory gate counts
    # finished sessions for 600 s and queues the rest behind them)
    assert [w.end_signal for w in workflows] == ["explicit", "explicit"]
    assert [len(w.calls) for w in workflows] == [2, 1]
