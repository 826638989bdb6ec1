"""The gateway's HTTP handlers: its routes, who is calling (API keys), the bounds on what a
request may be (calls pending, body size), and the pages beside the calls (models, health,
``/metrics``, the learned graphs, the OpenAPI document). A call, once read, goes to the
call pipeline (:mod:`.pipeline`)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from saga.gateway.auth import bearer
from saga.gateway.openapi import openapi_document
from saga.gateway.prometheus import render_metrics
from saga.gateway.server import (
    BodyTooLarge,
    HttpRequest,
    Response,
    ResponseStream,
    RouteTable,
    error,
)
from saga.wire.openai_api import BadRequest, Kind, parse_body

if TYPE_CHECKING:
    from saga.gateway.app import Gateway

log = logging.getLogger("saga.gateway")


class HttpHandlers:
    """The routes of one gateway and what answers each."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._pending = 0
        self.routes = RouteTable()
        self.routes.add("GET", "/openapi.json", self._openapi)
        self.routes.add("POST", "/v1/chat/completions", self._chat)
        self.routes.add("POST", "/v1/completions", self._completions)
        self.routes.add("GET", "/v1/models", self._models)
        self.routes.add("GET", "/health", self._health)
        self.routes.add("GET", "/metrics", self._metrics)
        self.routes.add("GET", "/saga/graph", self._graph)

    async def handle(self, http: HttpRequest) -> Response | ResponseStream:
        """Answer one request; a bug is a 500 whose traceback goes to the log (never the
        request's headers)."""
        try:
            return await self.routes.dispatch(http)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error on %s %s", http.method, http.path)
            return error(500, "internal error in the gateway", "server_error", "internal_error")

    async def _chat(self, http: HttpRequest) -> Response | ResponseStream:
        return await self._call(http, "chat", "/v1/chat/completions")

    async def _completions(self, http: HttpRequest) -> Response | ResponseStream:
        return await self._call(http, "completion", "/v1/completions")

    async def _models(self, http: HttpRequest) -> Response:
        gw = self._gw
        try:
            self._tenant(http)
        except BadRequest as failure:
            return error_response(failure)
        names = gw.config.served_models or [gw.model_name]
        return Response.json(
            {"object": "list", "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "saga"} for n in names
            ]}
        )

    async def _health(self, http: HttpRequest) -> Response:
        gw = self._gw
        up = [b.label for b, v in zip(gw.backends, gw.views, strict=True) if v.up]
        body = {"status": "ok" if up else "no backend up", "backends_up": len(up),
                "backends": len(gw.backends)}
        return Response.json(body, status=200 if up else 503)

    async def _metrics(self, http: HttpRequest) -> Response:
        denied = self._admin_only(http)
        if denied is not None:
            return denied
        return Response(200, (await render_metrics(self._gw)).encode(),
                        content_type="text/plain; charset=utf-8")

    async def _graph(self, http: HttpRequest) -> Response:
        """The policy's learned Agent Execution Graphs (``learning`` false and no agents
        for a policy that learns none)."""
        denied = self._admin_only(http)
        if denied is not None:
            return denied
        graphs = self._gw.graphs
        return Response.json({"policy": self._gw.config.policy, "learning": graphs is not None,
                              "agents": graphs.snapshot() if graphs is not None else {}})

    def _admin_only(self, http: HttpRequest) -> Response | None:
        """The refusal unless the request has an admin key or ``public_metrics`` is set
        (closed by default: with no admin key configured nobody gets in)."""
        gw = self._gw
        if gw.config.public_metrics:
            return None
        key = bearer(http)
        if key and gw.admin_keys.lookup(key) is not None:
            return None
        status = 403 if key and gw.keys.lookup(key) is not None else 401
        hint = "" if len(gw.admin_keys) else \
            " (none is configured: set admin_keys, or public_metrics = true)"
        return error(status, f"{http.path} needs an admin key{hint}", "authentication_error",
                     "admin_key_required")

    async def _openapi(self, http: HttpRequest) -> Response:
        return Response.json(openapi_document(self._gw.config))

    async def _call(self, http: HttpRequest, kind: Kind, path: str) -> Response | ResponseStream:
        gw = self._gw
        tenant = "-"
        cfg = gw.config
        if self._pending >= cfg.max_pending:
            gw.metrics.shed["pending"] += 1
            gw.metrics.requests[(tenant, 429)] += 1
            return error(429, f"gateway overloaded: {cfg.max_pending} calls pending",
                         "overloaded", "gateway_overloaded", {"Retry-After": "1"})
        self._pending += 1
        try:
            tenant = self._tenant(http)
            length = http.content_length
            if length is not None and length > cfg.max_body_bytes:
                raise _too_large(cfg.max_body_bytes)
            try:
                raw = await http.read()
            except BodyTooLarge:
                raise _too_large(cfg.max_body_bytes) from None
            body, data = parse_body(raw, kind)
            response = await gw.pipeline.serve(http, path, tenant, body, data, raw)
        except BadRequest as failure:
            gw.metrics.requests[(tenant, failure.status)] += 1
            return error_response(failure)
        finally:
            self._pending -= 1
        gw.metrics.requests[(tenant, response.status)] += 1
        return response

    def _tenant(self, http: HttpRequest) -> str:
        gw = self._gw
        if not gw.config.tenants:
            return "default"
        key = bearer(http)
        if not key:
            raise BadRequest(401, "missing API key: send 'Authorization: Bearer <key>'",
                             "authentication_error", "missing_api_key")
        tenant = gw.keys.lookup(key)
        if tenant is None:
            raise BadRequest(401, "unknown API key", "authentication_error", "invalid_api_key")
        return tenant


def error_response(failure: BadRequest) -> Response:
    return error(failure.status, failure.message, failure.kind, failure.code, failure.headers)


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, f"request body larger than {limit} bytes", code="body_too_large")
