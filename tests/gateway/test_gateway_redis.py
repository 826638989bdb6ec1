"""Two gateway processes sharing a real redis-server keep affinity and accounts consistent."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import openai
import pytest
from saga_procs import emulator, gateway, metric_value, metrics, redis_server

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def test_two_gateways_share_sessions_and_accounts(tmp_path: Path) -> None:
    with redis_server() as redis_url, emulator(replicas=2, time_scale=20.0) as urls:
        config = {
            "policy": "vllm-least-loaded",
            "cluster": "test-2",
            "tenants": {"alpha": {"keys": ["sk-alpha"]}},
            "store": {"kind": "redis", "url": redis_url, "prefix": f"t{tmp_path.name}:"},
            "backends": [{"url": u, "kind": "emulator"} for u in urls],
        }
        with gateway(config, tmp_path) as one, gateway(config, tmp_path) as two:
            asyncio.run(_scenario(one, two))
            a, b = metrics(one), metrics(two)
            tokens_a = metric_value(a, "saga_tenant_tokens_total", tenant="alpha")
            tokens_b = metric_value(b, "saga_tenant_tokens_total", tenant="alpha")
            assert tokens_a is not None and tokens_a > 0 and tokens_a == tokens_b
            # the workflow was admitted once, by the first gateway it reached
            assert metric_value(b, "saga_admission_decisions_total", verdict="admit") == 2


async def _scenario(one: str, two: str) -> None:
    c1 = openai.AsyncOpenAI(base_url=one + "/v1", api_key="sk-alpha", max_retries=0)
    c2 = openai.AsyncOpenAI(base_url=two + "/v1", api_key="sk-alpha", max_retries=0)

    async def call(client: openai.AsyncOpenAI, workflow: str, tokens: int) -> str:
        raw = await client.completions.with_raw_response.create(
            model="m", prompt=f"{workflow} " * 80, max_tokens=tokens,
            extra_headers={"x-saga-workflow": workflow},
        )
        raw.parse()
        return raw.headers["x-saga-backend"]

    # A long call through gateway two occupies replica 0 (least loaded, lowest index).
    long = asyncio.create_task(call(c2, "long", 2000))
    await asyncio.sleep(0.2)
    # Gateway one is idle: the workflow's first call goes to replica 0 as well.
    home = await call(c1, "shared", 4)
    assert home == "0"
    # Through gateway two, least-loaded alone would pick replica 1 ...
    assert await call(c2, "fresh", 4) == "1"
    # ... but the workflow's home, shared through Redis, keeps it on replica 0.
    assert await call(c2, "shared", 4) == home
    assert await long == "0"
    await c1.close()
    await c2.close()
