"""vLLM's KV cache events on the Ray path: read by the replica, reported through
``record_routing_stats()``, used by the router to cut its prefix estimate (a fake vLLM
and a fake event stream; no Ray, no engine)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from saga.gateway.kv_events import KVIndex
from saga.integrations.engines import free_port
from saga.integrations.ray.call import RayCall
from saga.integrations.ray.routing import SagaRouting, Tiers
from saga.integrations.ray.view import ReplicaStats
from saga.integrations.ray.vllm import PrefixReport, VLLMForwarder
from saga.wire.prefix import estimate_tokens, text_runs

ENGINE_BLOCK = 16


def _stored(hashes: list[int], parent: int | None, session: str) -> dict[str, Any]:
    tokens = [h * 100 + i for h in hashes for i in range(ENGINE_BLOCK)]
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
            "token_ids": tokens, "block_size": ENGINE_BLOCK, "medium": "GPU",
            "session_id": session}


def _removed(hashes: list[int]) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU"}


def _call(workflow: str, text: str) -> RayCall:
    return RayCall(
        workflow=workflow, tenant="default", agent="coder", tool=None, ends=False,
        kind="chat", model="m", messages=[{"role": "user", "content": text}],
        prompt_tokens=estimate_tokens(text), runs=text_runs(text, 64), max_tokens=4,
        body={"model": "m", "messages": [{"role": "user", "content": text}]},
    )


# ---- the replica's report ---------------------------------------------------------------
def test_the_report_gives_each_served_workflows_cached_prefix_in_vllm_tokens() -> None:
    index = KVIndex()
    report = PrefixReport(index, limit=2)
    index.apply_batch(0, [_stored([1, 2, 3, 4], None, "w1"), _stored([7], None, "w2")])
    report.served("w1")
    report.served("w2")
    assert report.report(ENGINE_BLOCK) == {"w1": 64, "w2": 16}
    index.apply_batch(1, [_removed([3])])  # vLLM evicted w1's third block: 2 remain
    assert report.report(ENGINE_BLOCK)["w1"] == 32
    report.served("w3")  # limit 2: w1 is forgotten
    assert report.report(ENGINE_BLOCK) == {"w2": 16, "w3": 0}


def test_the_router_learns_the_engines_token_scale_from_the_replicas_reports() -> None:
    routing = SagaRouting("saga", slots=2, cluster="small")
    routing.update_replicas(["r-a", "r-b"])
    text = "x" * 4000  # 1,000 tokens as estimated
    first = routing.route("q1", _call("w1", text), 0.0)
    assert isinstance(first, Tiers)
    assert routing.routed["q1"].info.prompt_tokens == 1000  # nothing answered yet
    # r-a's engine counted 3,000 tokens of 2,000 estimated, r-b's 1,000 of 1,000
    _reported(routing, "r-a", ReplicaStats(estimated_tokens=2000, engine_tokens=3000))
    _reported(routing, "r-b", ReplicaStats(estimated_tokens=1000, engine_tokens=1000))
    assert routing.token_scale is not None
    assert routing.token_scale.factor == pytest.approx(4000 / 3000)
    routing.route("q2", _call("w2", text), 1.0)
    assert routing.routed["q2"].info.prompt_tokens == 1333
    # a later report replaces that replica's totals (they are running sums): not added
    _reported(routing, "r-b", ReplicaStats(estimated_tokens=2000, engine_tokens=2000))
    assert routing.token_scale.factor == pytest.approx(5000 / 4000)
    # the views count the prefix index in the engine's blocks by the same scale
    view = routing.views[0]
    assert view.kv.scale is routing.token_scale


def test_without_learning_the_router_keeps_its_estimate_and_converts_the_report() -> None:
    routing = SagaRouting("saga", slots=2, cluster="small", learn_token_scale=False)
    routing.update_replicas(["r-a", "r-b"])
    assert routing.token_scale is None
    decision = routing.route("q1", _call("w1", "x" * 4000), 0.0)
    assert isinstance(decision, Tiers)
    assert routing.routed["q1"].info.prompt_tokens == 1000
    # vLLM counts twice the estimate: its 20 blocks x 64 tokens are 640 estimated tokens
    _reported(routing, "r-a", ReplicaStats(estimated_tokens=500, engine_tokens=1000,
                                           prefix_tokens={"w1": 20 * 64}))
    events = routing.views[routing.slot_of["r-a"]].kv.events
    assert events is not None
    assert events.session_prefix_blocks("w1") == 10


# ---- the router reads it ----------------------------------------------------------------
def _router_with_w1_home() -> tuple[SagaRouting, str, RayCall]:
    routing = SagaRouting("saga", slots=2, cluster="small")
    routing.update_replicas(["r-a", "r-b"])
    first = _call("w1", "shared context " * 600)
    decision = routing.route("q1", first, 0.0)
    assert isinstance(decision, Tiers)
    home = decision.ranks[0][0]
    routing.sent("q1", home, 0.0)
    routing.completed("q1", 1.0)
    return routing, home, _call("w1", "shared context " * 600 + " and the tool's output")


def _reported(routing: SagaRouting, replica: str, stats: ReplicaStats) -> None:
    routing.report(replica, ReplicaStats.read(stats.to_dict()))  # as Ray hands it over


def test_the_router_cuts_its_estimate_to_what_the_replica_reports() -> None:
    routing, home, nxt = _router_with_w1_home()
    view = routing.views[routing.slot_of[home]]
    estimate = view.cached_blocks_for(nxt.runs)
    assert estimate > 5  # the whole first prompt, sent there
    _reported(routing, home, ReplicaStats(prefix_tokens={"w1": 5 * 64}))
    assert view.cached_blocks_for(nxt.runs) == 5
    _reported(routing, home, ReplicaStats(prefix_tokens={"w1": 0}))  # evicted
    assert view.cached_blocks_for(nxt.runs) == 0
    assert view.prefix_lookups[0] == 2


def test_without_events_or_a_report_naming_the_workflow_the_estimate_stands() -> None:
    routing, home, nxt = _router_with_w1_home()
    view = routing.views[routing.slot_of[home]]
    estimate = view.cached_blocks_for(nxt.runs)
    _reported(routing, home, ReplicaStats(prefix_tokens={"other": 0}))
    assert view.cached_blocks_for(nxt.runs) == estimate  # not served there lately
    _reported(routing, home, ReplicaStats(prefix_tokens={"w1": 0}))
    _reported(routing, home, ReplicaStats())  # events off again
    assert view.cached_blocks_for(nxt.runs) == estimate
    assert view.events is None


def test_a_home_whose_cache_was_evicted_loses_its_pull_on_placement() -> None:
    def next_call_goes_to(cut: bool) -> tuple[str, str]:
        routing = SagaRouting("saga", slots=2, cluster="small")
        routing.update_replicas(["r-a", "r-b"])
        context = "shared context " * 2000
        first = routing.route("q1", _call("w1", context), 0.0)
        assert isinstance(first, Tiers)
        home = first.ranks[0][0]
        routing.sent("q1", home, 0.0)
        routing.completed("q1", 1.0)
        # another workflow's prompt runs on the home: about 0.6 s of prefill ahead, less
        # than what w1's cached context saves it there, more than the least gain a steal
        # needs (steal_min_gain 0.5 s) once that context is gone
        routing.route("o1", _call("other", "busy " * 10_500), 1.5)
        routing.sent("o1", home, 1.5)
        if cut:  # the events say vLLM evicted all of w1's context
            _reported(routing, home, ReplicaStats(prefix_tokens={"w1": 0}))
        nxt = routing.route("q2", _call("w1", context + " more"), 2.0)
        assert isinstance(nxt, Tiers)
        return home, nxt.ranks[0][0]

    home, chosen = next_call_goes_to(cut=False)
    assert chosen == home  # its cache pulls it home
    home, chosen = next_call_goes_to(cut=True)
    assert chosen != home  # nothing left to offer there: the idle replica


# ---- the replica's forwarder, against a fake vLLM and a fake event stream ---------------
METRICS = (
    'vllm:num_requests_running{engine="0"} 0.0\n'
    'vllm:num_requests_waiting{engine="0"} 0.0\n'
    'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
    f'vllm:cache_config_info{{block_size="{ENGINE_BLOCK}",engine="0",num_gpu_blocks="400"}} 1.0\n'
)


async def _fake_vllm(bodies: list[dict[str, Any]]) -> tuple[Any, str]:
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        text = body["messages"][0]["content"]
        usage = {"prompt_tokens": 2 * estimate_tokens(text), "completion_tokens": 1,
                 "total_tokens": 2 * estimate_tokens(text) + 1,
                 "prompt_tokens_details": {"cached_tokens": 32}}
        return web.json_response({"id": "c", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x"},
             "finish_reason": "length"}], "usage": usage})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=METRICS)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _publish_until(endpoint: str, events: list[dict[str, Any]],
                   applied: Callable[[], bool]) -> None:
    """Publish one batch as vLLM does (topic, 8-byte seq, msgpack [ts, events, rank]) to
    the subscriber bound at ``endpoint``, again until it is applied (a ZMQ publisher
    that just connected drops what it sends before the link is up)."""
    zmq = pytest.importorskip("zmq")
    msgspec = pytest.importorskip("msgspec")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)
    try:
        payload = msgspec.msgpack.encode([time.time(), events, 0])
        for seq in range(200):
            pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])
            time.sleep(0.05)
            if applied():
                return
        raise AssertionError("the subscriber never applied the batch")
    finally:
        pub.close(0)
        ctx.term()


def test_the_forwarder_passes_the_hint_on_and_reports_vllms_events() -> None:
    pytest.importorskip("zmq", reason="needs the `gateway-events` extra (pyzmq, msgspec)")
    pytest.importorskip("msgspec", reason="needs the `gateway-events` extra (pyzmq, msgspec)")
    bodies: list[dict[str, Any]] = []
    endpoint = f"tcp://127.0.0.1:{free_port()}"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        runner, url = await _fake_vllm(bodies)
        forwarder = VLLMForwarder(url, "r-a", block_tokens=64, kv_events=endpoint)
        try:
            call = _call("default/w1", "agent context " * 100)
            call.ttl_hints = {"r-a": 7.5}
            answer = await forwarder.forward(call)
            assert forwarder.prefixes is not None
            index = forwarder.prefixes.index
            assert isinstance(index, KVIndex)
            await asyncio.to_thread(
                _publish_until, endpoint, [_stored([1, 2, 3], None, "default/w1")],
                lambda: index.session_prefix_blocks("default/w1") == 3)
            stats = await forwarder.routing_stats()
            await asyncio.to_thread(
                _publish_until, endpoint, [_removed([2])],
                lambda: index.session_prefix_blocks("default/w1") == 1)
            later = await forwarder.routing_stats()
            return answer, stats, later
        finally:
            forwarder.close()
            await runner.cleanup()

    answer, stats, later = asyncio.run(scenario())
    sent = bodies[0]["vllm_xargs"]
    assert sent["saga_ttl"] == 7.5 and sent["session_id"] == "default/w1"
    assert answer["saga"] == {"replica": "r-a", "cached_tokens": 32, "status": 200,
                              "ttl_hint": 7.5}
    # the prefix in vLLM's tokens (3 blocks of 16); the answered call's prompt as the
    # router estimated it and as vLLM counted it (the fake counts twice the estimate)
    assert stats["prefix_tokens"] == {"default/w1": 3 * 16}
    estimated = estimate_tokens("agent context " * 100)
    assert (stats["estimated_tokens"], stats["engine_tokens"]) == (estimated, 2 * estimated)
    assert stats["kv_capacity_blocks"] == 400 * 16 // 64
    assert later["prefix_tokens"] == {"default/w1": 1 * 16}
    assert json.dumps(stats)  # plain data, as Ray ships it
