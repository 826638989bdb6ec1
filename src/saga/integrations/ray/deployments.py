"""Ray Serve deployments: the ingress (the router replicas), emulator and vLLM replicas.

* :class:`SagaIngress` -- the OpenAI-compatible HTTP front behind Serve's HTTP proxy. It
  reads each request into a :class:`~.call.RayCall` (workflow identity as the gateway
  reads it) and calls the replicas' deployment handle, whose request router (SAGA's or
  one of Ray's) picks the replica. Its replicas are the "router replicas": each holds
  its own handle, so its own router. A call whose replica died before answering is sent
  again once (the router then places it elsewhere): the client gets one answer.
* :class:`EmulatorReplica` -- one engine-model replica (:mod:`saga.emulator`) served in
  real time, no GPU: the model's queue and KV cache, reported by
  ``record_routing_stats()``.
* :class:`VLLMReplica` -- a replica fronting a running vLLM OpenAI server
  (:class:`~.vllm.VLLMForwarder`): calls go to it over HTTP with SAGA's extras (the
  router's retention decision as ``saga_ttl``); its queue and KV usage are read from
  its Prometheus ``/metrics``, the workflows' cached prefixes from its KV cache events
  when subscribed.
"""

from __future__ import annotations

import asyncio
import errno
import time
import uuid
from typing import Any

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse

from saga.emulator.engine import Emulator
from saga.engine.cluster import get_cluster
from saga.integrations.ray.call import RayCall, read_call
from saga.integrations.ray.view import ReplicaStats
from saga.integrations.ray.vllm import VLLMForwarder
from saga.wire.openai_api import BadRequest, Kind

#: Failures that mean the replica is gone, not that the call is bad: sent again once.
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)
_PATHS: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": code}}, status_code=status)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class SagaIngress:
    """The OpenAI API in front of the replicas (one router per ingress replica)."""

    def __init__(
        self, engine: Any, block_tokens: int = 64, keys: dict[str, str] | None = None,
        model: str = "saga-emulated", retries: int = 1,
    ) -> None:
        self.engine = engine
        self.block_tokens = block_tokens
        self.keys = keys or {}
        self.model = model
        self.retries = retries
        context = serve.get_replica_context()
        self.router_id = context.replica_id.unique_id if context is not None else "local"

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/v1/models"):
            return JSONResponse({"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "saga"}]})
        if request.method == "GET" and path.endswith("/health"):
            return JSONResponse({"status": "ok"})
        kind = next((k for p, k in _PATHS.items() if path.endswith(p)), None)
        if request.method != "POST" or kind is None:
            return _error(404, f"no route {request.method} {path}", "not_found")
        try:
            tenant = self._tenant(request)
            call = read_call(request.headers, await request.body(), kind, tenant,
                             self.block_tokens)
        except BadRequest as failure:
            return _error(failure.status, failure.message, failure.code or "bad_request")
        handle = self.engine.options(session_id=call.workflow)
        attempt = 0
        while True:
            try:
                answer: dict[str, Any] = await handle.remote(call)
                break
            except _REPLICA_GONE:
                if attempt >= self.retries:
                    return _error(503, "the replica died and the retry failed", "replica_died")
                attempt += 1
            except BackPressureError:
                return _error(429, "replicas overloaded", "overloaded")
            except PermissionError as refused:  # the policy rejected the workflow
                return _error(429, str(refused), "workflow_rejected")
        saga = answer.pop("saga", {})
        status = int(saga.get("status", 200))
        headers = {"x-saga-workflow": call.workflow, "x-saga-router": self.router_id,
                   "x-saga-replica": str(saga.get("replica", "")),
                   "x-saga-cached-tokens": str(saga.get("cached_tokens", 0)),
                   "x-saga-retries": str(attempt)}
        if saga.get("ttl_hint") is not None:  # the retention decision the replica passed on
            headers["x-saga-ttl-hint"] = str(saga["ttl_hint"])
        return JSONResponse(answer, headers=headers, status_code=status)

    def _tenant(self, request: Request) -> str:
        if not self.keys:
            return "default"
        auth = request.headers.get("authorization", "")
        tenant = self.keys.get(auth.removeprefix("Bearer ").strip())
        if tenant is None:
            raise BadRequest(401, "unknown or missing API key", "authentication_error",
                             "invalid_api_key")
        return tenant


def _answer(
    call: RayCall, text: str, usage: dict[str, Any], extra: dict[str, Any],
) -> dict[str, Any]:
    ident = ("chatcmpl-" if call.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    if call.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "length", "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
    return {"id": ident, "object": "chat.completion" if call.kind == "chat" else
            "text_completion", "created": int(time.time()), "model": call.model,
            "choices": [choice], "usage": usage, "saga": extra}


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class EmulatorReplica:
    """One engine-model replica of a cluster preset, in real time (no GPU)."""

    def __init__(self, cluster: str = "small", time_scale: float = 1.0,
                 block_tokens: int = 64) -> None:
        self.emulator = Emulator(get_cluster(cluster), 1, time_scale=time_scale,
                                 block_tokens=block_tokens)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id if context is not None else "local"
        self._clock: asyncio.Task[None] | None = None

    def _ensure_clock(self) -> None:
        if self._clock is None or self._clock.done():
            self._clock = asyncio.get_running_loop().create_task(
                self.emulator.loop.run_realtime())

    async def __call__(self, call: RayCall) -> dict[str, Any]:
        self._ensure_clock()
        state = self.emulator.submit(0, call.workflow, call.runs, call.prompt_tokens,
                                     call.max_tokens)
        try:
            while not state.done:
                await state.progress.wait()
                state.progress.clear()
        except asyncio.CancelledError:
            self.emulator.abort(state)
            raise
        req = state.request
        usage = {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.generated,
                 "total_tokens": req.prompt_tokens + req.generated,
                 "prompt_tokens_details": {"cached_tokens": req.cached_tokens}}
        return _answer(call, "x" * req.generated, usage,
                       {"replica": self.replica_id, "cached_tokens": req.cached_tokens})

    def record_routing_stats(self) -> dict[str, int]:
        r = self.emulator.replicas[0]
        return ReplicaStats(
            waiting=len(r.waiting), running=len(r.running),
            outstanding_tokens=r.outstanding_tokens(), demand_tokens=r.demand_tokens,
            backlog_tokens=r.backlog_tokens, kv_capacity_blocks=r.kv.capacity,
            kv_used_blocks=r.kv.used_blocks,
        ).to_dict()

    def totals(self) -> dict[str, int]:
        """Prompt and cached tokens served (the prefix hit rate of a benchmark)."""
        r = self.emulator.replicas[0]
        return {"prompt_tokens": r.prompt_tokens_total, "cached_tokens": r.cached_tokens_total,
                "calls": self.emulator.finished_calls}


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class VLLMReplica:
    """A replica fronting one vLLM OpenAI server (replica of rank i takes ``urls[i]``
    and, when given, binds ``kv_events[i]`` to read that server's KV cache events):
    a :class:`~.vllm.VLLMForwarder` as a Serve deployment."""

    def __init__(self, urls: list[str], capacity_blocks: int = 2048,
                 timeout: float = 600.0, block_tokens: int = 64,
                 kv_events: list[str] | None = None) -> None:
        context = serve.get_replica_context()
        rank = int(getattr(getattr(context, "rank", None), "rank", 0) or 0)
        if not kv_events:
            self.forwarder = self._forwarder(urls[rank % len(urls)], context, capacity_blocks,
                                             block_tokens, timeout, None)
            return
        # Replicas that start together may see the same rank, and two subscribers cannot
        # bind one endpoint: the bind is the claim. From its rank on, a replica takes the
        # first server whose events endpoint is free (and that server's URL with it).
        for k in range(len(kv_events)):
            i = (rank + k) % len(kv_events)
            try:
                self.forwarder = self._forwarder(urls[i % len(urls)], context, capacity_blocks,
                                                 block_tokens, timeout, kv_events[i])
                return
            except Exception as exc:
                if getattr(exc, "errno", None) != errno.EADDRINUSE or k == len(kv_events) - 1:
                    raise

    @staticmethod
    def _forwarder(url: str, context: Any, capacity_blocks: int, block_tokens: int,
                   timeout: float, kv_events: str | None) -> VLLMForwarder:
        return VLLMForwarder(
            url, context.replica_id.unique_id, capacity_blocks=capacity_blocks,
            block_tokens=block_tokens, timeout=timeout, kv_events=kv_events,
        )

    def __del__(self) -> None:
        forwarder = getattr(self, "forwarder", None)  # None when its start failed
        if forwarder is not None:
            forwarder.close()

    async def __call__(self, call: RayCall) -> dict[str, Any]:
        return await self.forwarder.forward(call)

    async def record_routing_stats(self) -> dict[str, Any]:
        return await self.forwarder.routing_stats()
