"""Relaying a call to a backend and its answer to the client (whole or streamed), counting
the tokens served and the prompt tokens the engine counted from the answer's ``usage``
(:class:`Usage`); what failed before any byte reached the
client is :class:`Retryable` (the call pipeline may send it again). ``answered`` is told
when the answer is complete at the gateway, before its end goes to the client (the call's
retention step begins: :mod:`.retain_step`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import NamedTuple

from saga.gateway.backends import Backend, BackendError
from saga.gateway.metrics import Metrics
from saga.gateway.server import HttpRequest, Response, ResponseStream
from saga.gateway.upstream import UpstreamError, UpstreamResponse
from saga.gateway.view import RemoteReplicaView
from saga.wire.openai_api import BadRequest, ChatRequest, CompletionRequest

#: ``"usage": {...  "total_tokens": N`` with no nested object before it (OpenAI, vLLM,
#: the emulator); JSON strings escape quotes, so ``"usage"`` is always a key.
_USAGE_TOTAL = re.compile(rb'"usage"\s*:\s*\{[^{}]*?"total_tokens"\s*:\s*(\d+)')
_USAGE_PROMPT = re.compile(rb'"usage"\s*:\s*\{[^{}]*?"prompt_tokens"\s*:\s*(\d+)')


class Usage(NamedTuple):
    """An answer's ``usage``: the tokens served (prompt plus output) and the prompt tokens
    the engine counted (0 each when the answer had none)."""

    total: int = 0
    prompt: int = 0


NO_USAGE = Usage()


class Retryable(Exception):
    """The backend failed before any byte reached the client: the call may go again."""

    def __init__(self, error: BadRequest) -> None:
        super().__init__(error.message)
        self.error = error


async def forward(
    metrics: Metrics, http: HttpRequest, backend: Backend, view: RemoteReplicaView, path: str,
    body: ChatRequest | CompletionRequest, payload: bytes,
    out_headers: dict[str, str], extra_headers: dict[str, str],
    answered: Callable[[], None],
) -> tuple[Response | ResponseStream, Usage]:
    """Send the call and relay the answer; return it and its usage.

    Raises :class:`Retryable` when the backend failed before anything was sent
    to the client. When the client leaves (a failed write, or the handler is
    cancelled) the backend connection is closed, which cancels the call there.
    """
    try:
        upstream = await backend.send(path, payload, out_headers)
    except BackendError as failure:
        if not failure.timeout:
            view.up = False
        code = "backend_timeout" if failure.timeout else "backend_unreachable"
        raise Retryable(BadRequest(504 if failure.timeout else 502, str(failure),
                                    "backend_error", code)) from None
    done = False
    try:
        if upstream.status >= 500:
            text = (await read_quietly(upstream))[:200].decode("utf-8", "replace")
            raise Retryable(BadRequest(
                502, f"backend {backend.label} answered {upstream.status}: {text}",
                "backend_error", "backend_failed"))
        if upstream.status != 200 or not body.stream:
            answer = await read_answer(upstream, backend, view, extra_headers)
            answered()  # the client gets it once the pipeline returns it
            done = True
            usage = usage_counts(answer.body) if upstream.status == 200 else NO_USAGE
            return answer, usage
        stream = await http.stream(200, {
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", **extra_headers
        })
        usage, done = await relay(metrics, upstream, stream, backend, view,
                                  client_usage=body.include_usage(), answered=answered)
        return stream, usage
    finally:
        if done:
            upstream.release()
        else:
            upstream.close()

async def read_answer(
    upstream: UpstreamResponse, backend: Backend, view: RemoteReplicaView,
    extra_headers: dict[str, str],
) -> Response:
    """A whole (not streamed) answer, or :class:`Retryable`."""
    try:
        payload = await upstream.read()
    except TimeoutError:
        raise Retryable(BadRequest(504, f"backend {backend.label} timed out",
                                    "backend_error", "backend_timeout")) from None
    except UpstreamError as failure:
        view.up = False
        raise Retryable(BadRequest(502, f"backend {backend.label} failed: {failure}",
                                    "backend_error", "backend_failed")) from None
    headers = extra_headers
    retry_after = upstream.headers.get("retry-after")
    if retry_after is not None:
        headers = {**extra_headers, "Retry-After": retry_after}
    return Response(upstream.status, payload, headers,
                    upstream.content_type or "application/json")

async def relay(
    metrics: Metrics, upstream: UpstreamResponse, stream: ResponseStream, backend: Backend,
    view: RemoteReplicaView, client_usage: bool, answered: Callable[[], None],
) -> tuple[Usage, bool]:
    """Relay an event stream; return its usage and whether it ended well.

    The gateway asked for the usage chunk (``include_usage``) to count tokens; it is
    kept from a client that did not ask for it. A backend failing mid-stream ends the
    stream with an ``error`` event, as OpenAI does (the status is sent already).
    The answer is complete (``answered``) at its usage chunk or ``[DONE]``, which end
    an OpenAI stream, or when the backend closes it, whichever comes first: before
    the client can see the end."""
    usage = NO_USAGE
    try:
        while (piece := await upstream.read_lines()) is not None:
            if b'"usage"' in piece:
                piece, found = take_usage(piece, keep=client_usage)
                usage = found if found.total else usage
                if found.total:
                    answered()
            if b"data: [DONE]" in piece:
                answered()
            if piece and not await stream.write(piece):
                metrics.client_disconnects += 1
                return usage, False  # the client left: close the backend call
        answered()
        await stream.finish()
        return usage, True
    except (TimeoutError, UpstreamError) as failure:
        view.up = isinstance(failure, TimeoutError)
        message = json.dumps({"error": {"message": f"backend {backend.label} failed "
                                        f"mid-stream: {failure!r}", "type": "backend_error"}})
        await stream.write(b"data: " + message.encode() + b"\n\n")
        return usage, False


async def read_quietly(upstream: UpstreamResponse) -> bytes:
    """The body of an answer that is an error already: what could be read of it."""
    try:
        return await upstream.read()
    except (TimeoutError, UpstreamError):
        return b""


def take_usage(piece: bytes, keep: bool) -> tuple[bytes, Usage]:
    """Find the usage chunk (``"choices": []``) among the lines of an event stream;
    return the lines (without it unless ``keep``) and its usage (zeros: none)."""
    usage = NO_USAGE
    lines = piece.splitlines(keepends=True)
    kept = []
    for line in lines:
        if line.startswith(b"data: {") and b'"usage"' in line and (
            b'"choices": []' in line or b'"choices":[]' in line
        ):
            usage = usage_counts(line[6:])
            if not keep:
                continue
        kept.append(line)
    return (piece if len(kept) == len(lines) else b"".join(kept)), usage


def usage_tokens(payload: bytes) -> int:
    """``usage.total_tokens`` of a response body or stream chunk, 0 without one.

    Engines write ``usage`` after the choices: the number is read after the last
    ``"usage"`` key rather than by decoding the whole (possibly long) body; a body
    that does not fit that shape is decoded."""
    at = payload.rfind(b'"usage"')
    if at >= 0:
        match = _USAGE_TOTAL.match(payload, at)
        if match is not None:
            return int(match.group(1))
    try:
        usage = json.loads(payload).get("usage") or {}
        return int(usage.get("total_tokens", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


def usage_counts(payload: bytes) -> Usage:
    """The :class:`Usage` of a response body or stream chunk (zeros without one), read
    as :func:`usage_tokens` reads the total."""
    at = payload.rfind(b'"usage"')
    if at >= 0:
        total = _USAGE_TOTAL.match(payload, at)
        prompt = _USAGE_PROMPT.match(payload, at)
        if total is not None and prompt is not None:
            return Usage(int(total.group(1)), int(prompt.group(1)))
    try:
        usage = json.loads(payload).get("usage") or {}
        return Usage(int(usage.get("total_tokens", 0)), int(usage.get("prompt_tokens", 0)))
    except (ValueError, AttributeError, TypeError):
        return NO_USAGE
