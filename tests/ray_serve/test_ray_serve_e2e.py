"""SAGA as Ray Serve's request router, end to end on a local Ray instance (2 CPUs).

One module-scoped Ray instance and one application: an ingress with two replicas (two
router replicas), two emulator replicas of the ``test-2`` preset (small KV, so the
memory gate binds) running ten times faster than real time. Every wait is bounded
polling on a condition.

Starting Ray and Serve is the slow part on a loaded machine (minutes at load 20-30):
``start`` waits for Serve's proxy as long as ``START_DEADLINE_S`` (not Serve's fixed
60 s, :mod:`saga.integrations.ray.serve_ready`), and the timeout of each test, which
counts the module's set-up in the first one, leaves room for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
requests = pytest.importorskip("requests")
aiohttp = pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")

from tests.ray_serve.waiting import free_port, until  # noqa: E402

from saga.integrations.ray.app import start  # noqa: E402
from saga.integrations.ray.config import RayAppConfig  # noqa: E402
from saga.integrations.ray.router import STATE_ACTOR, STATE_NAMESPACE  # noqa: E402

pytestmark = pytest.mark.timeout(900)  # START_DEADLINE_S (600) + the test itself


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    config = RayAppConfig(routers=2, replicas=2, cluster="test-2", time_scale=10.0,
                          stats_period=0.2, state_actor=STATE_ACTOR,
                          # calls spread over both routers: they agree through the state
                          ingress_affinity=False)
    start(config, port=port, num_cpus=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, workflow: str, text: str, **headers: str) -> Any:
    response = requests.post(
        url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 4},
        headers={"x-saga-workflow": workflow, **headers}, timeout=60.0,
    )
    assert response.status_code == 200, response.text
    return response


def _gates_see(tokens: float) -> bool:
    views = _summary()["gate_views"]
    return len(views) == 2 and min(views.values()) >= tokens


def _state() -> Any:
    return ray.get_actor(STATE_ACTOR, namespace=STATE_NAMESPACE)


def _summary() -> dict[str, Any]:
    return ray.get(_state().summary.remote(), timeout=30)  # type: ignore[no-any-return]


def test_the_openai_client_is_answered_through_serves_http_proxy(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused")
    answer = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello from the openai client"}],
        max_tokens=5, extra_headers={"x-saga-workflow": "openai-client"},
    )
    assert answer.choices[0].message.content == "x" * 5
    assert answer.usage is not None and answer.usage.completion_tokens == 5


def test_two_router_replicas_keep_a_workflow_on_one_home(base_url: str) -> None:
    routers: set[str] = set()
    replicas: set[str] = set()
    text = "an agent's growing context " * 40

    def both_routers_seen() -> bool:
        response = _post(base_url, "affinity", text + f" turn {len(routers)}")
        routers.add(response.headers["x-saga-router"])
        replicas.add(response.headers["x-saga-replica"])
        return len(routers) == 2

    until(both_routers_seen, "calls through both router replicas")
    assert len(replicas) == 1, replicas


def test_the_memory_gate_holds_a_workflow_and_releases_it(base_url: str) -> None:
    # 30k tokens each (a replica of test-2 holds 32k): two fit the gate (1.1 x 64k
    # tokens of KV), a third waits until one of them ends. Each prompt differs from its
    # first block: a prefix several workflows share is counted once (gate_shared_once)
    big = "z " * 60_000
    agent = {"x-saga-agent": "gate-agent"}
    _post(base_url, "gate-a", "a " + big, **agent)
    _post(base_url, "gate-a2", "a2 " + big, **agent)
    until(lambda: _gates_see(60_000), "both routers' gates counting both workflows")

    async def scenario() -> tuple[float, float]:
        body = {"model": "m", "messages": [{"role": "user", "content": "b " + big}],
                "max_tokens": 4}
        url = base_url + "/v1/chat/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

            async def post(payload: dict[str, Any], headers: dict[str, str]) -> int:
                async with http.post(url, json=payload, headers=headers) as response:
                    await response.read()
                    return response.status

            held = asyncio.create_task(post(body, {"x-saga-workflow": "gate-b", **agent}))
            for _ in range(1200):  # bounded: until a router reports it held
                summary = await asyncio.to_thread(_summary)
                if "default/gate-b" in summary["held"]:
                    break
                assert not held.done(), held.result()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("gate-b was never held")
            assert not held.done()
            end = {**body, "messages": [{"role": "user", "content": "a " + big + " end"}]}
            assert await post(end, {"x-saga-workflow": "gate-a", "x-saga-end": "true",
                                    **agent}) == 200
            ended = time.monotonic()
            assert await held == 200
            return ended, time.monotonic()

    ended, released = asyncio.run(scenario())
    assert released >= ended


def test_a_state_actor_restart_loses_only_warmth(base_url: str) -> None:
    before = ray.get(_state().ping.remote(), timeout=30)
    ray.kill(_state(), no_restart=False)
    after = until(lambda: _ping_changed(before), "the state actor restarted")
    assert after != before
    assert _summary()["homes"] == 0  # what it knew is gone
    first = _post(base_url, "after-restart", "warm again " * 30)
    second = _post(base_url, "after-restart", "warm again " * 31)
    assert first.headers["x-saga-replica"] and second.status_code == 200
    until(lambda: _summary()["homes"] >= 1, "homes written to the new actor")


def _ping_changed(before: str) -> str | None:
    try:
        now = ray.get(_state().ping.remote(), timeout=5)
    except Exception:
        return None
    return now if now != before else None


def test_a_killed_replicas_workflow_moves_and_is_answered_once(base_url: str) -> None:
    home = _post(base_url, "survivor", "work before the crash " * 30).headers["x-saga-replica"]
    names = ray.util.list_named_actors(all_namespaces=True)
    actor = next(a for a in names if home in a["name"])
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    response = _post(base_url, "survivor", "work before the crash " * 31)
    assert response.headers["x-saga-replica"] != home
    assert response.json()["choices"][0]["message"]["content"] == "x" * 4
