"""End to end: real emulator and gateway processes on loopback, driven by ``openai``."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from saga_procs import emulator, gateway, metric_value, metrics

pytestmark = pytest.mark.timeout(120)

TENANTS = {"alpha": {"keys": ["sk-alpha"], "weight": 1.0},
           "beta": {"keys": ["sk-beta"], "weight": 1.0, "slo": 3.0}}


@pytest.fixture(scope="module")
def backends() -> Iterator[list[str]]:
    with emulator(replicas=2, cluster="test-2", time_scale=20.0) as urls:
        yield urls


def _config(urls: list[str], **extra: Any) -> dict[str, Any]:
    concurrency = extra.pop("max_concurrency", 8)
    return {
        "policy": "vllm-least-loaded",
        "cluster": "test-2",
        "served_models": ["saga-test"],
        "tenants": TENANTS,
        "health_interval": 0.5,
        "backends": [{"url": u, "kind": "emulator", "max_concurrency": concurrency}
                     for u in urls],
        **extra,
    }


@pytest.fixture(scope="module")
def gw(backends: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway(_config(backends), tmp_path_factory.mktemp("gw")) as url:
        yield url


def _client(url: str, key: str = "sk-alpha") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_chat_plain_and_streaming(gw: str) -> None:
    client = _client(gw)
    raw = client.chat.completions.with_raw_response.create(
        model="saga-test", messages=[{"role": "user", "content": "hello " * 200}],
        max_tokens=7, extra_headers={"x-saga-workflow": "chat-1", "x-saga-agent": "tester"},
    )
    reply = raw.parse()
    assert raw.headers["x-saga-backend"] in {"0", "1"}
    assert reply.choices[0].message.content == " tok" * 7
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 250

    chunks = list(client.chat.completions.create(
        model="saga-test", messages=[{"role": "user", "content": "hi"}], max_tokens=20,
        stream=True, extra_headers={"x-saga-workflow": "chat-2"},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok" * 20
    assert all(c.usage is None for c in chunks)  # not asked for: stripped
    assert chunks[-1].choices[0].finish_reason == "length"

    with_usage = list(client.chat.completions.create(
        model="saga-test", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        stream=True, stream_options={"include_usage": True},
    ))
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 5


def test_completions_plain_and_streaming(gw: str) -> None:
    client = _client(gw, "sk-beta")
    reply = client.completions.create(model="saga-test", prompt="abc " * 100, max_tokens=4)
    assert reply.choices[0].text == " tok" * 4
    parts = list(client.completions.create(
        model="saga-test", prompt="abc " * 100, max_tokens=6, stream=True,
        extra_headers={"x-saga-end": "true"},
    ))
    assert "".join(p.choices[0].text for p in parts if p.choices) == " tok" * 6
    assert [m.id for m in client.models.list()] == ["saga-test"]


def test_clear_client_errors(gw: str) -> None:
    good = {"model": "saga-test", "messages": [{"role": "user", "content": "x"}]}
    auth = {"Authorization": "Bearer sk-alpha", "Content-Type": "application/json"}
    cases = [
        ({}, json.dumps(good).encode(), 401, "missing API key"),
        ({"Authorization": "Bearer nope"}, json.dumps(good).encode(), 401, "unknown API key"),
        (auth, b"{not json", 400, "not valid JSON"),
        (auth, json.dumps({**good, "max_tokens": 0}).encode(), 400, "max_tokens"),
        (auth, json.dumps({**good, "messages": []}).encode(), 400, "messages"),
        (auth, json.dumps({**good, "model": "gpt-9"}).encode(), 404, "not found"),
        ({**auth, "x-saga-end": "maybe"}, json.dumps(good).encode(), 400, "x-saga-end"),
    ]
    for headers, body, status, words in cases:
        code, payload = _post(gw, "/v1/chat/completions", body, headers)
        assert code == status, (words, payload)
        assert words in payload["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        _client(gw, "sk-wrong").chat.completions.create(model="saga-test", messages=[])


@pytest.fixture(scope="module")
def affinity_gw(backends: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {**_config(backends), "policy": "vllm-affinity"}
    with gateway(config, tmp_path_factory.mktemp("gw-affinity")) as url:
        yield url


def test_affinity_and_prefix_reuse(affinity_gw: str) -> None:
    """Under an affinity policy a workflow's calls stay on one replica while other
    workflows load the cluster, and its growing prompt hits the prefix cache there.

    (Not under the module's vllm-least-loaded: the gateway asks the policy for every
    call's replica, and least-loaded moves a workflow whenever the other replica is
    lighter, as in the simulator. This test used it and failed about 1 run in 3.)"""
    client = openai.AsyncOpenAI(base_url=affinity_gw + "/v1", api_key="sk-alpha",
                                max_retries=0)

    async def call(workflow: str, prompt: str, tokens: int) -> tuple[str, int]:
        raw = await client.completions.with_raw_response.create(
            model="saga-test", prompt=prompt, max_tokens=tokens,
            extra_headers={"x-saga-workflow": workflow},
        )
        reply = raw.parse()
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        return raw.headers["x-saga-backend"], reply.usage.prompt_tokens_details.cached_tokens or 0

    async def main() -> None:
        prompt = "system prompt. " * 200
        homes: list[str] = []
        cached: list[int] = []
        for turn in range(5):
            noise = [call(f"noise-{turn}-{i}", f"other {turn} {i} " * 50, 40) for i in range(3)]
            results = await asyncio.gather(call("sticky", prompt, 8), *noise)
            homes.append(results[0][0])
            cached.append(results[0][1])
            prompt += f" turn {turn} " + "more text " * 60
        assert len(set(homes)) == 1, homes
        assert cached[0] == 0
        # each turn finds the previous turn's full blocks (750 tokens -> 11 blocks first)
        assert cached[1] >= 11 * 64 and cached == sorted(cached) and cached[-1] > cached[1], cached
        await client.close()

    asyncio.run(main())


def test_metrics_exposed(gw: str) -> None:
    _client(gw).chat.completions.create(
        model="saga-test", messages=[{"role": "user", "content": "m"}], max_tokens=2)
    text = metrics(gw)
    for name in ("saga_queue_length", "saga_replica_in_flight", "saga_replica_up",
                 "saga_tenant_slowdown", "saga_retention_decisions_total",
                 "saga_decision_latency_seconds_count", "saga_tenant_tokens_total"):
        assert name in text, name
    assert (metric_value(text, "saga_requests_total", tenant="alpha", status="200") or 0) >= 1
    assert metric_value(text, "saga_retention_decisions_total", kind="release")
    with urllib.request.urlopen(gw + "/health", timeout=5) as response:
        assert json.loads(response.read())["backends_up"] == 2


def test_fair_share_between_tenants(backends: list[str], tmp_path: Path) -> None:
    """One slot per replica. Tenant alpha floods 16 calls; tenant beta then sends 4.
    With fair queueing beta is served alongside alpha, not after all of alpha's calls."""
    with gateway(_config(backends, max_concurrency=1), tmp_path) as url:
        alpha = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-alpha", max_retries=0)
        beta = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-beta", max_retries=0)
        done: list[tuple[float, str]] = []

        async def call(client: openai.AsyncOpenAI, tenant: str, i: int) -> None:
            await client.completions.create(
                model="saga-test", prompt=f"{tenant} {i} " * 20, max_tokens=200,
                extra_headers={"x-saga-workflow": f"{tenant}-{i}"},
            )
            done.append((time.monotonic(), tenant))

        async def main() -> None:
            flood = [asyncio.create_task(call(alpha, "alpha", i)) for i in range(16)]
            queued = 0.0
            for _ in range(200):  # until the flood waits at the gateway (a busy machine is slow)
                await asyncio.sleep(0.05)
                queued = metric_value(metrics(url), "saga_queue_length", queue="dispatch") or 0
                if queued >= 1:
                    break
            light = [asyncio.create_task(call(beta, "beta", i)) for i in range(4)]
            await asyncio.gather(*flood, *light)
            await alpha.close()
            await beta.close()
            assert queued >= 1  # the flood was waiting at the gateway

        asyncio.run(main())
        order = [tenant for _, tenant in sorted(done)]
        last_beta = max(i for i, t in enumerate(order) if t == "beta")
        alpha_after = sum(1 for t in order[last_beta + 1 :] if t == "alpha")
        assert alpha_after >= 4, order  # FIFO would leave none of alpha's after beta's
        text = metrics(url)
        assert metric_value(text, "saga_tenant_slowdown_count", tenant="beta") == 4


def test_admission_deferral_and_retention(backends: list[str], tmp_path: Path) -> None:
    config = _config(backends, policy="test-admission", plugins=["saga_test_policies"],
                     max_defer=0.5)
    with gateway(config, tmp_path) as url:
        client = _client(url)
        raw = client.chat.completions.with_raw_response.create(
            model="saga-test", messages=[{"role": "user", "content": "pin me " * 100}],
            max_tokens=3, extra_headers={"x-saga-workflow": "deferred-once"},
        )
        note = raw.headers["x-saga-admission"]
        assert note.startswith("deferred") and "warming up" in note
        # the next call of the admitted workflow is not deferred again
        again = client.chat.completions.with_raw_response.create(
            model="saga-test", messages=[{"role": "user", "content": "pin me " * 100}],
            max_tokens=3, extra_headers={"x-saga-workflow": "deferred-once"},
        )
        assert "x-saga-admission" not in again.headers
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="saga-test", messages=[{"role": "user", "content": "x"}], max_tokens=3,
                extra_headers={"x-saga-workflow": "never", "x-saga-agent": "blocked"},
            )
        assert "cluster full" in str(info.value)
        # retention: the policy pinned the workflow's KV on its replica
        backend = backends[int(raw.headers["x-saga-backend"])]
        deadline = time.monotonic() + 5
        pins: list[str] = []
        while time.monotonic() < deadline and "alpha/deferred-once" not in pins:
            with urllib.request.urlopen(backend + "/saga/state", timeout=5) as response:
                pins = json.loads(response.read())["pins"]
            time.sleep(0.05)
        assert "alpha/deferred-once" in pins
        text = metrics(url)
        assert metric_value(text, "saga_admission_decisions_total", verdict="defer")
        assert metric_value(text, "saga_retention_decisions_total", kind="pin")
