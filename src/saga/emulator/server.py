"""HTTP front of the emulator: one OpenAI-compatible server per replica.

Replica ``i`` listens on ``port + i``. Each serves:

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain and SSE);
  the output is ``max_tokens`` dummy tokens (default 16; the model never stops
  early), timed by the engine model;
* ``GET /v1/models``, ``GET /health``, ``GET /saga/state`` (load and KV as JSON),
  ``GET /saga/calls`` (the replica's recently answered calls, ``{"calls": [{"workflow",
  "arrived", "finished", "prompt_tokens", "cached_tokens", "output_tokens"}]}``, times
  in model seconds; the emulator keeps its last 1024 calls);
* the KV control API: ``POST /saga/kv/pin`` ``{"workflow", "ttl"}``,
  ``POST /saga/kv/unpin`` ``{"workflow"}``, ``POST /saga/kv/offload``
  ``{"workflow", "prefetch_after"?}``, ``POST /saga/kv/drop`` ``{"workflow"}``;
  ``ttl`` and ``prefetch_after`` are model seconds. With an admin key (``saga emulate
  --admin-key``), the KV control API, ``/saga/state`` and ``/saga/calls`` need it as a
  Bearer token (401 otherwise); the command refuses a non-loopback ``--host`` without one.

Hints a gateway may send: ``x-saga-workflow`` (whose KV a call extends and pins),
``x-saga-priority`` (a float, smaller is served first; default 0).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import traceback
import uuid
from typing import Any

from aiohttp import web

from saga.sched.decisions import Retention
from saga.wire.openai_api import BadRequest, Kind, error_response, parse_body
from saga.wire.prefix import estimate_tokens, text_runs

from .engine import CallState, Emulator

DEFAULT_MAX_TOKENS = 16
TOKEN = " tok"  # four characters: one token by the prefix module's estimate

EMULATOR_KEY = web.AppKey("emulator", Emulator)
REPLICA_KEY = web.AppKey("replica", int)
ADMIN_KEY = web.AppKey("admin_key", str)


def build_app(emulator: Emulator, replica: int, admin_key: str = "") -> web.Application:
    """Replica ``replica``'s server; ``admin_key`` (if any) guards the control routes."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[EMULATOR_KEY] = emulator
    app[REPLICA_KEY] = replica
    app[ADMIN_KEY] = admin_key
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/saga/state", _state)
    app.router.add_get("/saga/calls", _calls)
    app.router.add_post("/saga/kv/{verb}", _kv)
    return app


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completion")


async def _generate(http: web.Request, kind: Kind) -> web.StreamResponse:
    emulator = http.app[EMULATOR_KEY]
    replica = http.app[REPLICA_KEY]
    try:
        body, _ = parse_body(await http.read(), kind)
        priority = _float_header(http, "x-saga-priority", 0.0)
    except BadRequest as error:
        return error.response()
    if len(emulator.replicas[replica].waiting) >= emulator.max_waiting:
        return error_response(429, f"replica {replica}: {emulator.max_waiting} calls queued",
                              "overloaded", "queue_full", {"Retry-After": "1"})
    text = body.text()
    prompt_tokens = estimate_tokens(text)
    output_tokens = body.output_limit(DEFAULT_MAX_TOKENS)
    workflow = http.headers.get("x-saga-workflow") or body.user or f"anon-{uuid.uuid4().hex[:12]}"
    runs = text_runs(text, emulator.block_tokens)
    state = emulator.submit(
        replica, workflow, runs, prompt_tokens, output_tokens, stream=body.stream,
        priority=priority,
    )
    ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    try:
        if body.stream:
            return await _stream(http, kind, body.model, ident, created, state,
                                 body.include_usage())
        while not state.done:
            await state.progress.wait()
            state.progress.clear()
    except (asyncio.CancelledError, ConnectionResetError):
        emulator.abort(state)  # the client left (the server cancels its handler)
        raise
    req = state.request
    content = TOKEN * req.generated
    choice: dict[str, Any]
    if kind == "chat":
        choice = {
            "index": 0, "message": {"role": "assistant", "content": content},
            "finish_reason": "length", "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": content, "finish_reason": "length", "logprobs": None}
    return web.json_response(
        {
            "id": ident,
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice],
            "usage": _usage(state),
        },
        headers=_timing_headers(emulator, state),
    )


def _usage(state: CallState) -> dict[str, Any]:
    req = state.request
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": req.generated,
        "total_tokens": req.prompt_tokens + req.generated,
        "prompt_tokens_details": {"cached_tokens": req.cached_tokens},
    }


def _timing_headers(emulator: Emulator, state: CallState) -> dict[str, str]:
    req = state.request
    return {
        "x-saga-model-latency": f"{req.finished_at - state.arrived_at:.6f}",
        "x-saga-cached-tokens": str(req.cached_tokens),
        "x-saga-replica": str(state.replica),
    }


async def _stream(
    http: web.Request, kind: Kind, model: str, ident: str, created: int, state: CallState,
    include_usage: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(http)
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(text: str | None, finish: str | None, role: bool = False) -> bytes:
        choice: dict[str, Any]
        if kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        payload = {"id": ident, "object": obj, "created": created, "model": model,
                   "choices": [choice]}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    if kind == "chat":
        await response.write(chunk("", None, role=True))
    sent = 0
    req = state.request
    while True:
        await state.progress.wait()
        state.progress.clear()
        new = req.generated - sent
        if new > 0:
            await response.write(chunk(TOKEN * new, None))
            sent += new
        if state.done:
            break
    await response.write(chunk(None if kind == "chat" else "", "length"))
    if include_usage:
        payload = {"id": ident, "object": obj, "created": created, "model": model,
                   "choices": [], "usage": _usage(state)}
        await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(http: web.Request) -> web.Response:
    emulator = http.app[EMULATOR_KEY]
    return web.json_response(
        {"object": "list", "data": [{"id": emulator.cluster.model, "object": "model",
                                     "created": 0, "owned_by": "saga-emulator"}]}
    )


async def _health(http: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _refused(http: web.Request) -> web.Response | None:
    """401 unless the request bears the admin key (when one is set)."""
    key = http.app[ADMIN_KEY]
    if not key:
        return None
    scheme, _, given = http.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
        return None
    return error_response(401, f"{http.path} needs the emulator's admin key",
                          "authentication_error", "admin_key_required")


async def _state(http: web.Request) -> web.Response:
    refused = _refused(http)
    if refused is not None:
        return refused
    return web.json_response(http.app[EMULATOR_KEY].replica_state(http.app[REPLICA_KEY]))


async def _calls(http: web.Request) -> web.Response:
    refused = _refused(http)
    if refused is not None:
        return refused
    emulator = http.app[EMULATOR_KEY]
    return web.json_response({"calls": emulator.recent_calls(http.app[REPLICA_KEY])})


async def _kv(http: web.Request) -> web.Response:
    emulator = http.app[EMULATOR_KEY]
    replica = http.app[REPLICA_KEY]
    verb = http.match_info["verb"]
    refused = _refused(http)
    if refused is not None:
        return refused
    try:
        data = json.loads(await http.read() or b"{}")
    except (ValueError, RecursionError):
        return error_response(400, "KV control body is not valid JSON")
    if not isinstance(data, dict) or not isinstance(data.get("workflow"), str):
        return error_response(400, 'KV control body needs {"workflow": "<id>", ...}')
    workflow: str = data["workflow"]
    if verb == "unpin":
        return web.json_response({"unpinned": emulator.unpin(replica, workflow)})
    if verb == "pin":
        ttl = data.get("ttl")
        if not isinstance(ttl, int | float) or ttl <= 0:
            return error_response(400, "pin needs a positive ttl (model seconds)")
        decision = Retention("pin", float(ttl))
    elif verb == "offload":
        after = data.get("prefetch_after")
        if after is not None and (not isinstance(after, int | float) or after < 0):
            return error_response(400, "prefetch_after must be a number of seconds >= 0")
        at = None if after is None else emulator.model_now() + float(after)
        decision = Retention("offload", prefetch_at=at)
    elif verb == "drop":
        decision = Retention("drop")
    else:
        return error_response(404, f"unknown KV verb {verb!r}; use pin, unpin, offload, drop")
    return web.json_response({"blocks": emulator.retain(replica, workflow, decision)})


def _float_header(http: web.Request, name: str, default: float) -> float:
    raw = http.headers.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(400, f"header {name}: expected a number, got {raw!r}") from None


async def serve(
    emulator: Emulator, host: str, port: int, ready: asyncio.Event | None = None,
    admin_key: str = "",
) -> None:
    """Serve every replica (replica i on ``port + i``) until cancelled."""
    runners: list[web.AppRunner] = []
    clock = asyncio.create_task(emulator.loop.run_realtime())
    try:
        for i in range(len(emulator.replicas)):
            runner = web.AppRunner(build_app(emulator, i, admin_key), access_log=None,
                                   shutdown_timeout=1.0, handler_cancellation=True)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port + i).start()
        if ready is not None:
            ready.set()
        # The model's clock runs until cancelled; if it fails, the server must not
        # go on answering with a frozen model: stop with the error.
        try:
            await clock
        except Exception:
            traceback.print_exc()
            raise
        raise RuntimeError("the emulator's event loop stopped")
    finally:
        clock.cancel()
        for runner in runners:
            await runner.cleanup()

