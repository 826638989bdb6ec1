"""The emulator in process: real-time event loop, OpenAI API, prefix cache, KV control."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from saga.core.workflow import Call, Prompt, Workflow
from saga.emulator.engine import Emulator
from saga.emulator.realtime import RealtimeEventLoop
from saga.emulator.server import build_app
from saga.engine.cluster import get_cluster
from saga.sched.registry import build_policy
from saga.sim.simulator import Simulation

pytestmark = pytest.mark.timeout(60)


def test_realtime_loop_runs_events_in_order_on_the_scaled_clock() -> None:
    async def main() -> tuple[list[tuple[str, float]], RealtimeEventLoop]:
        loop = RealtimeEventLoop(time_scale=50.0)
        seen: list[tuple[str, float]] = []
        done = asyncio.Event()
        for name, at in (("b", 2.0), ("a", 1.0), ("c", 2.0)):
            loop.at(at, lambda n: seen.append((n, loop.clock_now())), name)
        loop.at(3.0, lambda _: done.set())
        task = asyncio.create_task(loop.run_realtime())
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        return seen, loop

    seen, loop = asyncio.run(main())
    assert [n for n, _ in seen] == ["a", "b", "c"]  # time order, ties in scheduling order
    assert all(wall >= at for (_, wall), at in zip(seen, (1.0, 2.0, 2.0), strict=True))
    with pytest.raises(ValueError):
        RealtimeEventLoop(time_scale=0)
    assert loop.now >= 3.0


def _with_client(
    scale: float, body: Callable[[TestClient[Any, Any], Emulator], Awaitable[None]],
    **options: int,
) -> None:
    async def main() -> None:
        emulator = Emulator(get_cluster("test-2"), 1, time_scale=scale, **options)
        clock = asyncio.create_task(emulator.loop.run_realtime())
        client = TestClient(TestServer(build_app(emulator, 0)))
        await client.start_server()
        try:
            await body(client, emulator)
        finally:
            await client.close()
            clock.cancel()

    asyncio.run(main())


def test_completion_prefix_cache_and_kv_control() -> None:
    async def body(client: TestClient[Any, Any], emulator: Emulator) -> None:
        prompt = "shared prefix " * 300  # 4200 characters: 16 full blocks
        headers = {"x-saga-workflow": "w1"}
        first = await client.post("/v1/completions", headers=headers,
                                  json={"model": "m", "prompt": prompt, "max_tokens": 8})
        assert first.status == 200
        data = await first.json()
        assert data["choices"][0]["text"] == " tok" * 8
        assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        second = await client.post("/v1/completions", headers=headers,
                                   json={"model": "m", "prompt": prompt + "more", "max_tokens": 8})
        cached = (await second.json())["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached == 16 * 64
        pin = await client.post("/saga/kv/pin", json={"workflow": "w1", "ttl": 100})
        assert (await pin.json())["blocks"] >= 16
        state = await (await client.get("/saga/state")).json()
        assert state["pins"] == ["w1"]
        unpin = await client.post("/saga/kv/unpin", json={"workflow": "w1"})
        assert (await unpin.json()) == {"unpinned": True}
        assert (await (await client.get("/saga/state")).json())["pins"] == []
        for path, payload, status in [
            ("/saga/kv/pin", {"workflow": "w1"}, 400),
            ("/saga/kv/pin", {"ttl": 3}, 400),
            ("/saga/kv/nope", {"workflow": "w1"}, 404),
            ("/v1/completions", {"model": "m"}, 400),
            ("/v1/chat/completions", {"model": "m", "messages": [], "max_tokens": 2}, 400),
        ]:
            response = await client.post(path, json=payload)
            assert response.status == status, (path, await response.text())
            assert "error" in await response.json()

    _with_client(20.0, body)


def test_chat_stream_delivers_every_token() -> None:
    async def body(client: TestClient[Any, Any], emulator: Emulator) -> None:
        response = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
            "stream": True, "stream_options": {"include_usage": True},
        })
        assert response.status == 200
        text = ""
        usage: dict[str, Any] | None = None
        chunks = 0
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"]:
                text += event["choices"][0]["delta"].get("content") or ""
                chunks += 1
            else:
                usage = event["usage"]
        assert text == " tok" * 50
        assert usage is not None and usage["completion_tokens"] == 50
        assert chunks > 3  # decode runs are cut so that tokens stream, not one burst

    _with_client(5.0, body)


def test_single_call_latency_matches_the_simulator() -> None:
    """One call alone: the emulator's modelled latency equals the simulator's TCT."""
    cluster = get_cluster("test-2")
    prompt = "x" * (64 * 4 * 20)
    workflow = Workflow("w", "t", "a", 0.0, (Call("c", Prompt(64 * 20, blocks=((0, 20),)), 300),))
    expected = Simulation(cluster, build_policy("vllm-rr"), [workflow]).run().workflows[0].tct

    async def body(client: TestClient[Any, Any], emulator: Emulator) -> None:
        response = await client.post("/v1/completions",
                                     json={"model": "m", "prompt": prompt, "max_tokens": 300})
        assert response.status == 200
        modelled = float(response.headers["x-saga-model-latency"])
        assert modelled == pytest.approx(expected, rel=0.05)

    _with_client(10.0, body)


def test_recent_calls_are_timed_on_the_model_clock() -> None:
    """``/saga/calls`` lists each answered call with its model-clock arrival and end:
    their difference is the latency the response's header reported."""

    async def body(client: TestClient[Any, Any], emulator: Emulator) -> None:
        latencies = []
        for workflow, tokens in (("w1", 8), ("w2", 12)):
            response = await client.post(
                "/v1/completions", headers={"x-saga-workflow": workflow},
                json={"model": "m", "prompt": "p " * 200, "max_tokens": tokens})
            assert response.status == 200
            latencies.append(float(response.headers["x-saga-model-latency"]))
        calls = (await (await client.get("/saga/calls")).json())["calls"]
        assert [(c["workflow"], c["output_tokens"]) for c in calls] == [("w1", 8), ("w2", 12)]
        assert [round(c["finished"] - c["arrived"], 6) for c in calls] == latencies
        assert calls[0]["finished"] <= calls[1]["arrived"]
        # the same 100-token prompt: w2 finds w1's one full block (64 tokens) cached
        assert [c["cached_tokens"] for c in calls] == [0, 64]

    _with_client(20.0, body)


def test_recent_calls_keep_only_the_last_ones() -> None:
    async def body(client: TestClient[Any, Any], emulator: Emulator) -> None:
        for i in range(5):
            response = await client.post(
                "/v1/completions", headers={"x-saga-workflow": f"w{i}"},
                json={"model": "m", "prompt": "p", "max_tokens": 1})
            assert response.status == 200
        calls = (await (await client.get("/saga/calls")).json())["calls"]
        assert [c["workflow"] for c in calls] == ["w2", "w3", "w4"]

    _with_client(50.0, body, recent_calls=3)


def test_only_the_latest_workflows_kv_is_remembered_for_retain() -> None:
    async def body(client: TestClient[Any, Any], emulator: Emulator) -> None:
        prompt = "shared prefix " * 300  # 16 full blocks
        for i in range(5):
            response = await client.post(
                "/v1/completions", headers={"x-saga-workflow": f"w{i}"},
                json={"model": "m", "prompt": f"{i} {prompt}", "max_tokens": 1})
            assert response.status == 200
        assert list(emulator.last_kv[0]) == ["w2", "w3", "w4"]
        forgotten = await client.post("/saga/kv/pin", json={"workflow": "w1", "ttl": 100})
        assert (await forgotten.json())["blocks"] == 0
        kept = await client.post("/saga/kv/pin", json={"workflow": "w3", "ttl": 100})
        assert (await kept.json())["blocks"] >= 16
        dropped = await client.post("/saga/kv/drop", json={"workflow": "w4"})
        assert (await dropped.json())["blocks"] >= 16
        assert list(emulator.last_kv[0]) == ["w2", "w3"]  # a drop forgets the workflow

    _with_client(50.0, body, remembered_workflows=3)
    with pytest.raises(ValueError, match="at least 1"):
        Emulator(get_cluster("test-2"), 1, remembered_workflows=0)


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from saga.emulator.cli import main

    assert main(["--cluster", "nope"]) == 2
    assert "unknown cluster" in capsys.readouterr().err
    assert main(["--time-scale", "0"]) == 2
