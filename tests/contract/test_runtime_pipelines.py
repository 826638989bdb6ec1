"""A small workload through each runtime's own pipeline, for every registered policy.

The simulator (engine-model replicas), and the gateway's whole call pipeline in-process
(admission, placement, the per-backend queue, retention) in front of emulator replicas
over HTTP. The hooks one by one, with each adapter's objects, are
:mod:`test_policy_hooks`.

This file imports only what existed before the scheduler interface, so that it runs on
that code too: there (commit 96c3748) the gateway's ``infercept`` case failed, its
``retention`` reading ``replica.config.max_num_batched_tokens`` of a
``RemoteReplicaView`` (AttributeError).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import pytest

from saga import simulate
from saga.sched.registry import build_policy, list_policies

POLICIES = list_policies()


@pytest.mark.parametrize("name", POLICIES)
def test_small_workload_through_the_simulator(name: str) -> None:
    summary = simulate(workload="coding-agent", params={"count": "3"}, cluster="small",
                       policy=name, seed=1)
    assert summary["workflows_completed"] == 3


class _Http:
    """What the gateway's handler reads of an HTTP request (saga.gateway.server.HttpRequest)."""

    def __init__(self, path: str, headers: Mapping[str, str], body: bytes) -> None:
        self.method = "POST"
        self.path = path
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.content_length: int | None = len(body)
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def stream(self, status: int, headers: Mapping[str, str]) -> object:
        raise AssertionError("the contract test asks for whole answers")


def _text(workflow: str, blocks: int) -> str:
    def block(b: int) -> str:
        text = f"[{workflow if b >= 2 else 'system'} {b}] "
        return (text * 64)[:256]

    return "".join(block(b) for b in range(blocks))


async def _through_gateway(name: str) -> list[int]:
    from aiohttp import web

    from saga.emulator.engine import Emulator
    from saga.emulator.server import build_app
    from saga.engine.cluster import get_cluster
    from saga.gateway.app import Gateway
    from saga.gateway.config import GatewayConfig

    # the emulator's replicas in this process, each on a port of its own (as `serve`)
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
        "policy": name, "cluster": "test-2",
        "backends": [{"url": f"http://127.0.0.1:{port}", "kind": "emulator",
                      "max_concurrency": 1} for port in ports],
        "tenants": {"t0": {"keys": ["k0"], "weight": 2.0}, "t1": {"keys": ["k1"]}},
    })
    gateway = Gateway(config)
    await gateway.start()
    statuses: list[int] = []
    try:
        async def workflow(w: int) -> None:
            for k in range(3):
                headers = {"authorization": f"Bearer k{w % 2}", "x-saga-workflow": f"w{w}",
                           "x-saga-agent": "coder", "content-type": "application/json"}
                if k:
                    headers["x-saga-tool"] = "bash"
                if k == 2:
                    headers["x-saga-end"] = "true"
                body = json.dumps({"model": "m", "prompt": _text(f"w{w}", 4 + 2 * k),
                                   "max_tokens": 8}).encode()
                response = await gateway.handle(_Http("/v1/completions", headers, body))
                statuses.append(response.status)
                await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(*(workflow(w) for w in range(4))), 60)
    finally:
        await gateway.stop()
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
    return statuses


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [p for p in POLICIES if not build_policy(p).offline])
def test_small_workload_through_the_gateway_pipeline(name: str) -> None:
    """Four workflows of three calls through the gateway's whole call pipeline (admission,
    placement, the per-backend queue, retention) in front of two emulator replicas."""
    assert asyncio.run(_through_gateway(name)) == [200] * 12


@pytest.mark.parametrize("name", POLICIES)
def test_small_workload_through_the_vllm_scheduler_core(name: str) -> None:
    """Four workflows of three calls through what ``SagaScheduler`` does with vLLM's
    requests (arrive, order the waiting queue, schedule, finish, pin, sweep), over a fake
    engine that runs one request at a time; every workflow's calls are served in order."""
    from fake_vllm import FakeEngine, FakeRequest

    from saga.integrations.vllm_scheduler import (
        Hints,
        KeyedQueue,
        SagaInVLLM,
        VLLMSchedulerConfig,
    )

    engine = FakeEngine()
    core = SagaInVLLM(VLLMSchedulerConfig(), engine, lambda blocks: None, block_size=64,
                      capacity_blocks=engine.capacity, max_num_batched_tokens=8192,
                      policy=build_policy(name))
    now = 0.0
    queue: KeyedQueue[FakeRequest] = KeyedQueue(lambda r: core.key(r, now))
    served: list[str] = []
    for k in range(3):
        for w in range(4):
            hints = Hints(f"t{w % 2}/w{w}", f"t{w % 2}", "coder", "bash" if k else None, k == 2)
            request = FakeRequest(f"w{w}-c{k}", 640 * (k + 1), arrival_time=now)
            core.arrive(request, hints, now)
            queue.add_request(request)
            engine.waiting = queue.items()
        while queue:
            now += 0.5
            queue.refresh()
            request = queue.pop_request()
            engine.waiting = queue.items()
            engine.running = [request]
            core.scheduled([request.request_id], now)
            request.num_computed_tokens, request.num_output_tokens = request.num_tokens, 16
            decision = core.finish(request, completed=True, now=now + 0.25)
            engine.running = []
            if decision.kind == "pin" and decision.ttl > 0:
                core.pins.pin(request.request_id, [0], now, decision.ttl)
            served.append(request.request_id)
        now += 1.0
    assert sorted(served) == sorted(f"w{w}-c{k}" for w in range(4) for k in range(3))
    assert not core.workflows and not core.calls  # every workflow ended with its last call
    assert core.sweep(now + 10 * core.config.idle_timeout) == []
