"""The gateway keeps where each answered call's time went (saga.gateway.metrics.CallPhases)
and how long each retention step it carried out took (RetainTiming)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from inproc import Post, chat, fake_openai
from saga_procs import HOST

from saga.gateway.config import GatewayConfig


@pytest.mark.timeout(60)
def test_each_answered_call_is_kept_with_its_phases() -> None:
    from saga.gateway.app import Gateway

    async def main() -> tuple[list[Any], float]:
        runner, url = await fake_openai(HOST)
        gateway = Gateway(GatewayConfig.model_validate({
            "policy": "saga", "cluster": "test-2",
            "backends": [{"url": url, "kind": "openai"}]}))
        await gateway.start()
        try:
            began = gateway.now()
            for i in range(2):
                response = await gateway.handle(Post(  # type: ignore[arg-type]
                    "/v1/chat/completions", chat(f"call {i}"),
                    {"x-saga-workflow": "w", "x-saga-end": "1" if i else "0"}))
                assert response.status == 200
            elapsed = gateway.now() - began
        finally:
            await gateway.stop()
            await runner.cleanup()
        return list(gateway.metrics.phases), elapsed

    records, elapsed = asyncio.run(main())
    assert [(p.workflow, p.call, p.replica) for p in records] == [
        ("default/w", 0, 0), ("default/w", 1, 0)]
    for p in records:
        spent = (p.door, p.retain_wait, p.queue, p.prepare, p.upstream)
        assert min(spent) >= 0 and p.upstream > 0
        assert sum(spent) <= elapsed  # the phases split the call's time at the gateway
