"""The gateway's handlers as an aiohttp application, for embedding in an aiohttp server
(``saga serve`` uses the faster :mod:`saga.gateway.server`).

Every path goes to :meth:`Gateway.handle` (so routing, 404/405 and error bodies are the
same as on the fast server); aiohttp's own errors (a body over ``max_body_bytes``) become
OpenAI error bodies too. Run it with ``handler_cancellation=True`` so that a client that
disconnects cancels its call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from saga.gateway.server import BodyTooLarge, Response, ResponseStream, error

if TYPE_CHECKING:
    from saga.gateway.app import Gateway


class _Stream:
    """A :class:`~saga.gateway.server.ResponseStream` over aiohttp's StreamResponse."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.status = response.status
        self._finished = False

    async def write(self, data: bytes) -> bool:
        try:
            await self.response.write(data)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return False
        return True

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await self.response.write_eof()


class _Request:
    """A :class:`~saga.gateway.server.HttpRequest` over aiohttp's request."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.method = request.method
        self.path = request.path
        self.headers: Mapping[str, str] = request.headers  # looks names up in any case
        self.stream_response: _Stream | None = None

    @property
    def content_length(self) -> int | None:
        return self._request.content_length

    async def read(self) -> bytes:
        try:
            return await self._request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge from None

    async def stream(self, status: int, headers: Mapping[str, str]) -> ResponseStream:
        response = web.StreamResponse(status=status, headers=dict(headers))
        await response.prepare(self._request)
        self.stream_response = _Stream(response)
        return self.stream_response


def _to_aiohttp(answer: Response) -> web.Response:
    headers = dict(answer.headers or {})
    if answer.content_type:
        headers["Content-Type"] = answer.content_type
    return web.Response(body=answer.body, status=answer.status, headers=headers)


def build_app(gateway: Gateway) -> web.Application:
    """An aiohttp application serving ``gateway``; it starts and stops with it."""

    async def handle(http: web.Request) -> web.StreamResponse:
        request = _Request(http)
        answer = await gateway.handle(request)
        if isinstance(answer, Response):
            return _to_aiohttp(answer)
        assert request.stream_response is not None
        await answer.finish()
        return request.stream_response.response

    app = web.Application(client_max_size=gateway.config.max_body_bytes,
                          middlewares=[_errors_as_json])
    app.router.add_route("*", "/{tail:.*}", handle)

    async def on_startup(_: web.Application) -> None:
        await gateway.start()

    async def on_cleanup(_: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


@web.middleware
async def _errors_as_json(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """aiohttp's own errors (a 413 while reading, say) as OpenAI error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as failure:
        if failure.status < 400:
            raise
        return _to_aiohttp(error(failure.status, failure.reason, code=f"http_{failure.status}"))
