"""What a Ray Serve replica fronting a vLLM server sends it and reads of it (free of Ray).

:class:`VLLMForwarder` is the replica's work (:class:`~.deployments.VLLMReplica` is a
thin Serve shell around it), so it is tested against a fake vLLM and a fake event
stream. Its parts:

* :func:`request_body` -- the OpenAI body a call is forwarded with: SAGA's per-request
  extras in ``vllm_xargs``, as SAGA's gateway sends them
  (:meth:`saga.gateway.backends.VLLMBackend.prepare`): ``saga_workflow``,
  ``saga_tenant``, ``session_id`` (the workflow: vLLM tags the KV events of the blocks a
  request stores with it), ``saga_agent``, ``saga_tool``, ``saga_end``, and ``saga_ttl``
  when the router's retention decision pinned the workflow's KV on *this* replica
  (:attr:`~.call.RayCall.ttl_hints`). SAGA's scheduler inside vLLM
  (:mod:`saga.integrations.vllm_scheduler`) reads them; a stock vLLM ignores them.
* :func:`parse_vllm_metrics` -- the queue and KV gauges of vLLM's ``/metrics``, and its
  cache layout (``vllm:cache_config_info``: block size and KV blocks).
* :class:`PrefixReport` -- the replica's view of vLLM's KV cache events (a
  :class:`saga.gateway.kv_events.KVIndex` fed by a subscriber in the replica): for each
  workflow the replica served lately, the tokens of its last prompt still cached from
  the start, in vLLM's tokens. The replica returns it from ``record_routing_stats()``;
  the router cuts its prefix estimate to it (:mod:`.prefixes`).
* the prompt tokens of the calls answered, as the router estimated them and as vLLM
  counted them (``usage.prompt_tokens``), also in the stats: the routers learn the
  engines' token scale from them (:class:`saga.wire.token_scale.TokenScale`).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from typing import Any, Protocol

import aiohttp

from saga.integrations.engines import parse_prometheus
from saga.integrations.ray.call import RayCall
from saga.integrations.ray.view import ReplicaStats
from saga.wire.token_scale import TokenScale

#: vLLM's Prometheus gauges the replica reports (``vllm:`` prefix, any labels).
_VLLM_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",
}
#: The extras a client may not set itself (the router's word counts, not the caller's).
_OURS = ("saga_workflow", "saga_tenant", "saga_agent", "saga_tool", "saga_end", "saga_ttl",
         "session_id")


def request_body(call: RayCall, replica_id: str) -> dict[str, Any]:
    """The body to POST to vLLM for ``call`` on the replica ``replica_id`` (a new dict)."""
    body = {**call.body, "stream": False}
    xargs = {k: v for k, v in dict(body.get("vllm_xargs") or {}).items() if k not in _OURS}
    tenant, scoped, _ = call.workflow.partition("/")
    xargs["saga_workflow"] = call.workflow
    xargs["saga_tenant"] = tenant if scoped else "default"
    xargs["session_id"] = call.workflow
    xargs["saga_agent"] = call.agent
    if call.tool is not None:
        xargs["saga_tool"] = call.tool
    if call.ends:
        xargs["saga_end"] = True
    ttl = call.ttl_hints.get(replica_id)
    if ttl is not None:
        xargs["saga_ttl"] = ttl
    body["vllm_xargs"] = xargs
    return body


def parse_vllm_metrics(
    text: str, capacity_blocks: int, block_tokens: int | None = None,
) -> ReplicaStats:
    """What a vLLM server's ``/metrics`` says of its queue and KV cache.

    The KV capacity, in blocks of ``block_tokens`` (the router's block size), is vLLM's
    own (``vllm:cache_config_info``: ``num_gpu_blocks`` of ``block_size`` tokens) when the
    page has it and ``block_tokens`` is given, else ``capacity_blocks``."""
    metrics = parse_prometheus(text)
    seen: dict[str, float] = {}
    for name, samples in metrics.items():
        key = _VLLM_GAUGES.get(name)
        if key is not None:
            seen[key] = seen.get(key, 0.0) + sum(value for _, value in samples)
    layout = engine_layout(metrics)
    if layout is not None and block_tokens:
        engine_blocks, engine_block_tokens = layout
        capacity_blocks = engine_blocks * engine_block_tokens // block_tokens
    return ReplicaStats(
        waiting=int(seen.get("waiting", 0)), running=int(seen.get("running", 0)),
        kv_capacity_blocks=capacity_blocks,
        kv_used_blocks=int(seen.get("kv_usage", 0.0) * capacity_blocks),
    )


def engine_layout(
    metrics: dict[str, list[tuple[dict[str, str], float]]],
) -> tuple[int, int] | None:
    """vLLM's KV blocks and tokens per block (``vllm:cache_config_info``), if published."""
    for labels, _ in metrics.get("vllm:cache_config_info", []):
        try:
            blocks, size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
        except (KeyError, ValueError):
            continue
        if blocks > 0 and size > 0:
            return blocks, size
    return None


class SessionIndex(Protocol):
    """What :class:`PrefixReport` reads of a KV-event index (``KVIndex``)."""

    def session_prefix_blocks(self, session: str) -> int: ...


class PrefixReport:
    """The workflows a replica served lately and, from vLLM's KV events, how much of each
    one's prompt vLLM still holds.

    ``report`` gives, for the ``limit`` workflows served last, the tokens of their last
    stored prompt cached from the start (vLLM's blocks times its block size: vLLM's
    tokens; the router converts them if it counts otherwise). A workflow not in the
    report is one the replica has not served lately: the router keeps its own estimate
    for it. Each workflow's chain is walked per report (a few hundred blocks for an
    agent's long context), so the report is bounded (``limit``) and made again only
    after new events."""

    def __init__(self, index: SessionIndex, limit: int = 256) -> None:
        self.index = index
        self.limit = limit
        self._workflows: OrderedDict[str, None] = OrderedDict()
        #: The last report and what it was made of (the index's batches, the workflows,
        #: the block size): made again only when one of them changed.
        self._last: tuple[tuple[object, ...], dict[str, int]] | None = None

    def served(self, workflow: str) -> None:
        """A call of ``workflow`` was answered: it is reported, newest last."""
        self._workflows[workflow] = None
        self._workflows.move_to_end(workflow)
        while len(self._workflows) > self.limit:
            self._workflows.popitem(last=False)

    def forget(self, workflow: str) -> None:
        self._workflows.pop(workflow, None)

    def report(self, engine_block_tokens: int) -> dict[str, int]:
        """Workflow -> cached prefix tokens (vLLM's), newest last."""
        counters = getattr(self.index, "counters", None)
        made_of = (getattr(counters, "batches", None), tuple(self._workflows),
                   engine_block_tokens)
        if counters is not None and self._last is not None and self._last[0] == made_of:
            return dict(self._last[1])  # no event since: the same report
        report = {w: self.index.session_prefix_blocks(w) * engine_block_tokens
                  for w in self._workflows}
        self._last = (made_of, report)
        return dict(report)


class VLLMForwarder:
    """Forwards calls to one vLLM OpenAI server at ``url`` and reads its state for the
    routers. ``kv_events``: an endpoint (``tcp://HOST:PORT``) to bind a subscriber to
    vLLM's KV cache events at (the server's ``--kv-events-config`` names it; the
    ``gateway-events`` extra); None: no events, the report has no prefixes."""

    def __init__(
        self, url: str, replica_id: str, *, capacity_blocks: int = 2048,
        block_tokens: int = 64, timeout: float = 600.0, kv_events: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.replica_id = replica_id
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        #: vLLM's tokens per block, read once from its ``/metrics``.
        self.engine_block_tokens: int | None = None
        self.prefixes: PrefixReport | None = None
        #: The answered calls' prompt tokens, as the router estimated and vLLM counted.
        self.answered = TokenScale()
        self._subscriber: Any = None
        if kv_events is not None:
            from saga.gateway.kv_events import KVEventSubscriber, KVIndex

            index = KVIndex()
            self._subscriber = KVEventSubscriber(kv_events, index).start()
            self.prefixes = PrefixReport(index)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def forward(self, call: RayCall) -> dict[str, Any]:
        """vLLM's answer to ``call``, with ``saga``: this replica, the cached tokens, the
        HTTP status and the TTL hint passed on (None if none was for this replica)."""
        path = "/v1/chat/completions" if call.kind == "chat" else "/v1/completions"
        body = request_body(call, self.replica_id)
        async with self._http().post(self.url + path, data=json.dumps(body),
                                     headers={"Content-Type": "application/json",
                                              "x-saga-workflow": call.workflow}) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
            status = resp.status
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
        if status == 200:
            self.answered.observe(call.prompt_tokens, int(usage.get("prompt_tokens") or 0))
            if self.prefixes is not None:
                self.prefixes.served(call.workflow)
        answer["saga"] = {"replica": self.replica_id, "cached_tokens": cached,
                          "status": status, "ttl_hint": call.ttl_hints.get(self.replica_id)}
        return answer

    async def routing_stats(self) -> dict[str, Any]:
        """``record_routing_stats()``: the queue and KV gauges and, with events, each
        recent workflow's cached prefix (:class:`PrefixReport`)."""
        try:
            async with self._http().get(self.url + "/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return ReplicaStats(estimated_tokens=self.answered.estimated,
                                engine_tokens=self.answered.engine).to_dict()
        stats = dataclasses.replace(
            parse_vllm_metrics(text, self.capacity_blocks, self.block_tokens),
            estimated_tokens=self.answered.estimated, engine_tokens=self.answered.engine)
        if self.prefixes is None:
            return stats.to_dict()
        if self.engine_block_tokens is None:
            layout = engine_layout(parse_prometheus(text))
            self.engine_block_tokens = layout[1] if layout is not None else None
        if self.engine_block_tokens is None:  # vLLM's block size unknown: no report
            return stats.to_dict()
        return {**stats.to_dict(), "prefix_tokens": self.prefixes.report(
            self.engine_block_tokens)}

    def close(self) -> None:
        """Stop the event subscriber (the HTTP session closes with its loop)."""
        if self._subscriber is not None:
            self._subscriber.stop()
            self._subscriber = None
