"""Learned Agent Execution Graphs shared between gateways through the store.

The store's observation log (memory and a real redis-server), gateways in one process
sharing a MemoryStore, failures of the store during sync, and two real gateway
processes sharing a real Redis in front of emulators.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import openai
import pytest
from pydantic import ValidationError
from saga_procs import emulator, gateway, metric_value, redis_server

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.gateway.store import FIRST_CURSOR, MemoryStore, RedisStore, Store
from saga.sched.saga.graph import GraphStore, Observation

pytestmark = pytest.mark.timeout(120)
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="needs redis-server")
T = TypeVar("T")


# ---- the store's observation log ----------------------------------------------------------
@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def stores(request: pytest.FixtureRequest) -> Iterator[Callable[[int], tuple[Store, Store]]]:
    """Makes two handles on one store (two gateways' views of it), log length given."""
    if request.param == "memory":
        def memory(length: int) -> tuple[Store, Store]:
            store = MemoryStore(graph_log_length=length)
            return store, store
        yield memory
        return
    with redis_server() as url:
        count = iter(range(1000))

        def redis(length: int) -> tuple[Store, Store]:
            prefix = f"t{next(count)}:"  # a fresh log per call
            return RedisStore(url, prefix, length), RedisStore(url, prefix, length)
        yield redis


def _ends(n: int, agent: str = "coder") -> list[Observation]:
    return [Observation(agent, "end", f"n#{i}") for i in range(n)]


async def _read_all(store: Store, source: str, page: int) -> tuple[list[Observation], int]:
    """Everything after the log's start that ``source`` did not publish, and the pages."""
    cursor, pages = FIRST_CURSOR, 0
    got: list[Observation] = []
    while True:
        after, batch = await store.fetch_observations(source, cursor, page)
        if after == cursor:
            assert batch == []
            return got, pages
        cursor, pages = after, pages + 1
        got += batch


async def _close(*stores: Store) -> None:
    for store in stores:
        await store.close()


def test_the_log_gives_each_gateway_the_others_observations_in_order(
    stores: Callable[[int], tuple[Store, Store]],
) -> None:
    async def scenario() -> None:
        a, b = stores(1000)
        mine = _ends(600)
        theirs = [Observation("coder", "output", "^#0", tokens=7),
                  Observation("coder", "transition", "^#0", "bash#1", 0.1 + 0.2, 35)]
        await a.publish_observations("a", mine[:300])  # entries of 256 and 44
        await b.publish_observations("b", theirs)
        await a.publish_observations("a", mine[300:])  # 256 and 44 again
        got, pages = await _read_all(b, "b", page=2)
        assert got == mine  # b's own entry is read past, not returned
        assert pages == 3  # 5 entries, 2 a page
        assert (await _read_all(a, "a", page=100))[0] == theirs  # exact floats too
        await _close(a, b)

    asyncio.run(scenario())


def test_the_log_keeps_about_its_length(stores: Callable[[int], tuple[Store, Store]]) -> None:
    async def scenario() -> None:
        a, b = stores(10)
        sent = _ends(300)
        for obs in sent:  # one entry each
            await a.publish_observations("a", [obs])
        got, _ = await _read_all(b, "b", page=1000)
        # memory keeps exactly 10; Redis trims approximately (whole nodes of 100 entries)
        assert 10 <= len(got) <= 200
        assert got == sent[-len(got):]
        await _close(a, b)

    asyncio.run(scenario())


@needs_redis
def test_a_malformed_redis_entry_is_skipped_not_fatal() -> None:
    async def scenario(url: str) -> None:
        store = RedisStore(url, "bad:")
        await store.publish_observations("a", _ends(2))
        await store._redis.xadd("bad:graph_log", {"source": "x", "rows": "[1, 2"})
        await store._redis.xadd("bad:graph_log", {"source": "x", "rows": '[["e","a","n"],7]'})
        await store.publish_observations("a", _ends(1, agent="last"))
        got, _ = await _read_all(store, "b", page=10)
        assert got == [*_ends(2), Observation("a", "end", "n"), *_ends(1, agent="last")]
        await store.close()

    with redis_server() as url:
        asyncio.run(scenario(url))


# ---- gateways in one process ----------------------------------------------------------------
def _gateway_config(**extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "policy": "saga", "cluster": "small", "backends": [{"url": "http://127.0.0.1:1"}],
        **extra,
    })


def _graphs(gw: Gateway) -> GraphStore:
    assert gw.graphs is not None
    return gw.graphs


def _learn(graphs: GraphStore, workflows: int, tool: str = "bash") -> None:
    """What the policy observes of ``workflows`` three-call workflows of agent coder."""
    for w in range(workflows):
        g = graphs.get("coder")
        g.observe_output("^#0", 100 + w)
        g.observe_transition("^#0", f"{tool}#1", 0.5 + w / 7, 300)
        g.observe_output(f"{tool}#1", 50)
        g.observe_transition(f"{tool}#1", f"{tool}#2", 1.5 + w / 3, 120)
        g.observe_output(f"{tool}#2", 20)
        g.observe_end(f"{tool}#2")


def test_gateways_sharing_a_memory_store_share_what_their_graphs_learn() -> None:
    store = MemoryStore()
    a, b = Gateway(_gateway_config(), store=store), Gateway(_gateway_config(), store=store)
    _learn(_graphs(a), 5)

    async def sync() -> None:
        await a.sync_graphs()
        await b.sync_graphs()

    asyncio.run(sync())
    # b applied a's observations in a's order: the very same estimates
    assert _graphs(b).snapshot() == _graphs(a).snapshot()
    assert a.metrics.graph_observations["published"] == 30
    assert b.metrics.graph_observations["applied"] == 30
    assert b.metrics.graph_observations["published"] == 0  # nothing echoed back
    # and the other way: b learns a new tool, a learns it from b
    _learn(_graphs(b), 2, tool="grep")
    asyncio.run(b.sync_graphs())
    asyncio.run(a.sync_graphs())
    assert _graphs(a).get("coder").duration("grep") == _graphs(b).get("coder").duration("grep")
    assert _graphs(a).get("coder").observations == _graphs(b).get("coder").observations == 42
    asyncio.run(sync())  # nothing new: nothing more applied anywhere
    assert a.metrics.graph_observations["applied"] == 12
    assert b.metrics.graph_observations["applied"] == 30


class FlakyStore(MemoryStore):
    """A memory store that fails (as an unreachable Redis would) while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def publish_observations(self, source: str, observations: Sequence[Observation]) -> None:
        if self.down:
            raise ConnectionError("store down")
        await super().publish_observations(source, observations)

    async def fetch_observations(
        self, source: str, cursor: str, limit: int
    ) -> tuple[str, list[Observation]]:
        if self.down:
            raise ConnectionError("store down")
        return await super().fetch_observations(source, cursor, limit)


def test_a_failing_store_loses_no_observation_within_the_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="saga.gateway")
    store = FlakyStore()
    a = Gateway(_gateway_config(graph_sync_backlog=5), store=store)
    b = Gateway(_gateway_config(), store=store)
    g = _graphs(a).get("coder")
    for i in range(3):
        g.observe_end(f"n#{i}")
    asyncio.run(a.sync_graphs())  # raises nothing
    asyncio.run(a.sync_graphs())
    assert a.metrics.graph_sync_errors == {"publish": 2, "fetch": 2}
    assert len([r for r in caplog.records if "graph sync" in r.message]) == 1  # once an outage
    for i in range(3, 7):
        g.observe_end(f"n#{i}")  # 7 kept for 5 places: the 2 oldest go
    assert a.metrics.graph_observations["dropped"] == 2
    store.down = False
    asyncio.run(a.sync_graphs())
    asyncio.run(b.sync_graphs())
    assert a.metrics.graph_observations["published"] == 5
    seen = cast(dict[str, object], _graphs(b).get("coder").snapshot()["nodes"])
    assert sorted(seen) == [f"n#{i}" for i in range(2, 7)]
    assert "answers again" in caplog.records[-1].message


class StuckStore(MemoryStore):
    """A store whose publish never answers."""

    async def publish_observations(self, source: str, observations: Sequence[Observation]) -> None:
        await asyncio.Event().wait()


def test_a_publish_cancelled_midway_keeps_its_batch() -> None:
    a = Gateway(_gateway_config(), store=StuckStore())
    _learn(_graphs(a), 1)

    async def scenario() -> None:
        task = asyncio.ensure_future(a.sync_graphs())
        await asyncio.sleep(0)
        assert not a.graph_sync.outbox  # taken for publishing
        _graphs(a).get("coder").observe_end("late#0")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [o.node for o in a.graph_sync.outbox][-2:] == ["bash#2", "late#0"]  # in order, none lost
    assert len(a.graph_sync.outbox) == 7


@pytest.mark.parametrize("extra", [{"graph_sync_interval": 0}, {"graph_sync_interval": None},
                                   {"policy": "vllm-rr"}, {"policy": "saga-no-graph"}])
def test_graph_sync_off(extra: dict[str, Any]) -> None:
    gw = Gateway(_gateway_config(**extra))
    assert not gw.graph_sync.enabled
    if gw.graphs is not None:
        _learn(gw.graphs, 1)
    assert not gw.graph_sync.outbox  # nothing recorded


def test_graph_sync_interval_is_validated() -> None:
    with pytest.raises(ValidationError, match="graph_sync_interval"):
        _gateway_config(graph_sync_interval=-1.0)
    assert _gateway_config().graph_sync_interval == 1.0


# ---- two gateway processes, one Redis ---------------------------------------------------------
def _eventually(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns something, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _get(url: str, key: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
        return body


def _graph(url: str, key: str = "sk-admin") -> dict[str, Any]:
    body: dict[str, Any] = json.loads(_get(url + "/saga/graph", key))
    return body


def _metrics(url: str) -> str:
    return _get(url + "/metrics", "sk-admin").decode()


def _learned(graph: dict[str, Any]) -> dict[str, Any]:
    """What a graph learned, not its value-iteration state (refreshed on its own schedule
    in each process, so equal only to its tolerance)."""
    nodes = {k: {f: v for f, v in node.items() if not f.startswith("remaining")}
             for k, node in graph["nodes"].items()}
    return {"nodes": nodes, "edges": graph["edges"], "tools": graph["tools"]}


def _drive(url: str, workflows: int) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-alpha", max_retries=0, timeout=30)
    tools = (None, "bash", "grep", "bash")
    for w in range(workflows):
        calls = 2 + w % 3
        for k in range(calls):
            headers = {"x-saga-workflow": f"wf-{w}", "x-saga-agent": "coder"}
            if tools[k]:
                headers["x-saga-tool"] = str(tools[k])
            if k == calls - 1:
                headers["x-saga-end"] = "true"
            client.completions.create(model="m", prompt=f"task {w} " * (20 + 10 * k),
                                      max_tokens=4 + k, extra_headers=headers)
    client.close()


@needs_redis
def test_two_gateway_processes_share_learned_graphs_through_redis(tmp_path: Path) -> None:
    with redis_server() as redis_url, emulator(replicas=2, time_scale=20.0) as urls:
        config = {
            "policy": "saga", "cluster": "test-2", "graph_sync_interval": 0.2,
            "tenants": {"alpha": {"keys": ["sk-alpha"]}}, "admin_keys": ["sk-admin"],
            "store": {"kind": "redis", "url": redis_url, "prefix": f"t{tmp_path.name}:"},
            "backends": [{"url": u, "kind": "emulator"} for u in urls],
        }
        with gateway(config, tmp_path) as one, gateway(config, tmp_path) as two:
            with pytest.raises(urllib.error.HTTPError) as refused:
                _graph(two, key="sk-alpha")  # a tenant's key does not read the graphs
            assert refused.value.code == 403
            _drive(one, workflows=6)  # through gateway one only
            learned = _learned(_graph(one)["agents"]["alpha/coder"])
            assert learned["nodes"]["^#0"]["calls"] == 6

            def two_learned() -> dict[str, Any] | None:
                coder = _graph(two)["agents"].get("alpha/coder")
                return coder if coder is not None and _learned(coder) == learned else None

            # exactly what one learned: the same counts, and the same floats (applied in order)
            _eventually(two_learned, "gateway two learns gateway one's graph")

            def counters() -> tuple[float, float] | None:
                a, b = _metrics(one), _metrics(two)
                sent = metric_value(a, "saga_graph_observations_total", event="published")
                got = metric_value(b, "saga_graph_observations_total", event="applied")
                return (sent, got) if sent and sent == got else None

            sent, _ = _eventually(counters, "published and applied counters agree")
            b = _metrics(two)
            assert metric_value(b, "saga_graph_observations_total", event="published") == 0
            assert metric_value(b, "saga_graph_sync_errors_total", op="fetch") == 0
            # 18 calls: an output each, a transition for each but a workflow's first, 6 ends
            assert sent == 18 + 12 + 6
