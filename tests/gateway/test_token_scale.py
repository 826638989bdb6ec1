"""The gateway's learned token scale (saga.wire.token_scale): engine prompt tokens per
estimated token from the answers' usage, and what the gateway counts with it."""

from __future__ import annotations

import asyncio
import json

from inproc import Post, chat

from saga.gateway.config import GatewayConfig
from saga.gateway.relay import Usage, usage_counts
from saga.gateway.view import ApproxPrefixIndex, GatewayCall
from saga.sched.policy import CallInfo
from saga.wire.prefix import chat_text, estimate_tokens
from saga.wire.token_scale import TokenScale

HOST = "127.0.0.1"


def test_scale_is_the_ratio_of_engine_to_estimated_tokens_over_the_answers() -> None:
    scale = TokenScale()
    assert scale.factor == 1.0 and scale.tokens(100) == 100 and scale.tokens(0) == 1
    scale.observe(100, 160)
    assert scale.factor == 1.6 and scale.tokens(50) == 80
    scale.observe(300, 420)  # cumulative: 580 engine tokens for 400 estimated
    assert scale.factor == 1.45 and scale.tokens(100) == 145
    scale.observe(500, 0)  # an answer without usage teaches nothing
    scale.observe(0, 70)
    assert (scale.estimated, scale.engine) == (400, 580)
    scale.assign(1000, 2500)  # totals counted elsewhere replace these
    assert scale.factor == 2.5
    scale.assign(1000, 0)  # half a total is no total: back to the plain estimate
    assert (scale.estimated, scale.engine, scale.factor) == (0, 0, 1.0)


def test_a_prior_counts_the_calls_before_the_first_answer_and_the_answers_replace_it() -> None:
    import pytest

    scale = TokenScale(prior=1.6)
    assert scale.factor == 1.6 and scale.tokens(100) == 160 and scale.tokens(0) == 1
    scale.observe(100, 120)  # the engine's own count wins from its first answer
    assert scale.factor == 1.2 and scale.tokens(100) == 120
    scale.assign(0, 0)
    assert scale.factor == 1.6
    with pytest.raises(ValueError, match="positive"):
        TokenScale(prior=0.0)
    # the gateway takes its prior from its configuration, validated there
    from saga.gateway.app import Gateway

    config = {"policy": "saga", "cluster": "cpu-tiny",
              "backends": [{"url": "http://127.0.0.1:1", "kind": "vllm"}]}
    assert Gateway(GatewayConfig.model_validate(
        {**config, "token_scale_prior": 1.6})).token_scale.factor == 1.6
    with pytest.raises(ValueError, match="token_scale_prior"):
        GatewayConfig.model_validate({**config, "token_scale_prior": -1})


def test_usage_counts_reads_the_prompt_and_total_tokens() -> None:
    vllm = {"choices": [], "usage": {"prompt_tokens": 2198, "total_tokens": 2230,
                                     "completion_tokens": 32,
                                     "prompt_tokens_details": {"cached_tokens": 2176}}}
    assert usage_counts(json.dumps(vllm).encode()) == Usage(2230, 2198)
    details_first = {"usage": {"prompt_tokens_details": {"cached_tokens": 0},
                               "prompt_tokens": 5, "total_tokens": 9}}
    assert usage_counts(json.dumps(details_first).encode()) == Usage(9, 5)  # decoded
    assert usage_counts(b'{"usage": {"total_tokens": 9}}') == Usage(9, 0)
    assert usage_counts(b"not json") == Usage(0, 0)


def test_index_with_a_scale_counts_engine_blocks_and_holds_what_the_engine_holds() -> None:
    index = ApproxPrefixIndex(capacity_blocks=12)
    scale = TokenScale()
    scale.observe(100, 150)  # 1.5 engine tokens per estimated token
    index.scale = scale
    runs = tuple((f"h:{i}", 0, 1) for i in range(8))
    index.add(runs)
    assert index.match_blocks(runs) == 12 and index.used_blocks == 12  # 8 text blocks
    index.add((("h:x", 0, 1),))  # 12 engine blocks hold 8 text blocks: h:0 goes
    assert index.match_blocks(runs) == 0 and index.match_blocks(runs[1:]) == 10
    assert index.free_blocks == 0


def test_index_with_a_scale_compares_the_engines_events_as_they_are() -> None:
    class Events:
        def session_prefix_blocks(self, session: str) -> int:
            return {"w1": 4}.get(session, 0)

    index = ApproxPrefixIndex(capacity_blocks=100)
    runs = tuple((f"h:{i}", 0, 1) for i in range(6))
    index.add(runs, "w1")
    index.events = Events()  # type: ignore[assignment]
    index.token_ratio = 0.5  # the unscaled path converts engine blocks to text blocks
    assert index.match_blocks(runs) == 2
    scale = TokenScale()
    scale.observe(100, 200)
    index.scale = scale  # engine blocks on both sides: min(6 x 2, 4)
    assert index.match_blocks(runs) == 4
    assert index.lookups == [2, 6 + 12, 2 + 4]


def test_a_call_is_at_least_its_keyed_blocks_in_the_engines_tokens() -> None:
    info = CallInfo("w", "t", "a", "c0", 0, None, 100, (("h:a", 0, 3),), 0.0, 0.0, None, False)
    assert GatewayCall(info, 8, 16, 1, 0.0).prompt_tokens == 100
    assert GatewayCall(info, 8, 16, 1, 0.0, scale=0.5).prompt_tokens == 100
    assert GatewayCall(info, 8, 16, 1, 0.0, scale=2.5).prompt_tokens == 120


def _gateway_answering(prompt_tokens: int, learn: bool) -> list[int]:
    """Two calls through a gateway whose backend counts every prompt as
    ``prompt_tokens``: the prompt tokens the policy was given for each."""
    from aiohttp import web

    from saga.gateway.app import Gateway

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                      "total_tokens": prompt_tokens + 1}})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({})

    async def main() -> list[int]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        config = GatewayConfig.model_validate({
            "policy": "vllm-least-loaded", "cluster": "test-2", "learn_token_scale": learn,
            "backends": [{"url": f"http://{host}:{port}", "kind": "openai"}],
            "tenants": {"t": {"keys": ["k"]}}})
        gateway = Gateway(config)
        given: list[int] = []
        ready = gateway.policy.on_call_ready

        def seen(call: CallInfo, now: float) -> None:
            given.append(call.prompt_tokens)
            ready(call, now)

        gateway.policy.on_call_ready = seen  # type: ignore[method-assign]
        await gateway.start()
        try:
            for text in ("x" * 400, "y" * 800):
                reply = await gateway.handle(Post(  # type: ignore[arg-type]
                    "/v1/chat/completions", chat(text), {"Authorization": "Bearer k"}))
                assert reply.status == 200
        finally:
            await gateway.stop()
            await runner.cleanup()
        return given

    return asyncio.run(main())


def test_the_gateway_scales_its_estimates_by_what_the_engine_counted() -> None:
    first = estimate_tokens(chat_text([{"role": "user", "content": "x" * 400}]))
    second = estimate_tokens(chat_text([{"role": "user", "content": "y" * 800}]))
    # the engine counts the first prompt as 2x the estimate: the second is scaled by it
    assert _gateway_answering(2 * first, learn=True) == [first, 2 * second]
    assert _gateway_answering(2 * first, learn=False) == [first, second]
