"""/metrics and /saga/graph need an admin key unless the config says public_metrics;
the emulator's KV control API needs its admin key when it has one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from inproc import Get

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig, load_config
from saga.gateway.server import Response


def _statuses(extra: dict[str, Any]) -> dict[tuple[str, str], int]:
    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "test-2",
        "backends": [{"url": "http://127.0.0.1:1", "kind": "emulator"}],
        "tenants": {"alpha": {"keys": ["sk-alpha"]}}, **extra,
    })
    gateway = Gateway(config)

    async def main() -> dict[tuple[str, str], int]:
        out = {}
        await gateway.start()
        try:
            for path in ("/metrics", "/saga/graph"):
                for who, key in (("none", ""), ("tenant", "sk-alpha"), ("admin", "sk-admin"),
                                 ("wrong", "sk-nope")):
                    headers = {"Authorization": f"Bearer {key}"} if key else {}
                    response = await gateway.handle(Get(path, headers))  # type: ignore[arg-type]
                    out[(path, who)] = response.status
        finally:
            await gateway.stop()
        return out

    return asyncio.run(main())


def test_admin_pages_are_closed_by_default() -> None:
    closed = _statuses({})
    assert all(closed[(p, "none")] == 401 for p in ("/metrics", "/saga/graph"))
    assert all(closed[(p, "tenant")] == 403 for p in ("/metrics", "/saga/graph"))
    assert all(closed[(p, "admin")] == 401 for p in ("/metrics", "/saga/graph"))  # no such key
    keyed = _statuses({"admin_keys": ["sk-admin"]})
    assert {k: v for k, v in keyed.items() if k[1] == "admin"} == {
        ("/metrics", "admin"): 200, ("/saga/graph", "admin"): 200}
    assert all(v in (401, 403) for k, v in keyed.items() if k[1] != "admin")
    public = _statuses({"public_metrics": True})
    assert set(public.values()) == {200}


def test_the_closed_page_says_how_to_open_it() -> None:
    config = GatewayConfig.model_validate({
        "backends": [{"url": "http://127.0.0.1:1"}]})
    response = asyncio.run(Gateway(config).handle(Get("/metrics", {})))  # type: ignore[arg-type]
    assert isinstance(response, Response)
    message = json.loads(response.body)["error"]["message"]
    assert "set admin_keys, or public_metrics = true" in message


def test_the_example_config_says_which() -> None:
    example = load_config(Path(__file__).resolve().parents[2] / "examples" / "gateway.toml")
    assert example.admin_keys and not example.public_metrics


@pytest.mark.timeout(60)
def test_the_emulator_kv_control_api_needs_its_admin_key() -> None:
    from aiohttp import ClientSession, web

    from saga.emulator.engine import Emulator
    from saga.emulator.server import build_app
    from saga.engine.cluster import get_cluster

    async def main() -> list[int]:
        emulator = Emulator(get_cluster("test-2"), 1, time_scale=50.0)
        runner = web.AppRunner(build_app(emulator, 0, "sk-emu"), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        out = []
        try:
            async with ClientSession() as http:
                for key in ("", "sk-wrong", "sk-emu"):
                    headers = {"Authorization": f"Bearer {key}"} if key else {}
                    async with http.post(url + "/saga/kv/drop", json={"workflow": "w"},
                                         headers=headers) as r:
                        out.append(r.status)
                    async with http.get(url + "/saga/state", headers=headers) as r:
                        out.append(r.status)
                    async with http.get(url + "/saga/calls", headers=headers) as r:
                        out.append(r.status)
                async with http.get(url + "/health") as r:
                    out.append(r.status)
        finally:
            await runner.cleanup()
        return out

    assert asyncio.run(main()) == [401, 401, 401, 401, 401, 401, 200, 200, 200, 200]


def test_the_emulator_refuses_an_open_kv_api_on_the_network() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "saga.emulator", "--host", "0.0.0.0", "--replicas", "1",
         "--cluster", "test-2"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--admin-key" in done.stderr + done.stdout
