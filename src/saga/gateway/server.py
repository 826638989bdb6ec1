"""The gateway's HTTP/1.1 server: asyncio protocols and the httptools (llhttp) parser.

Why not aiohttp's server: a profile of the gateway at 1,000 calls/s showed 85 % of its
CPU in aiohttp's server and client layers (request objects, middlewares, payload
registries, timers per call), and on a small machine the gateway's CPU per call is its
added latency. This server does what the gateway needs and no more:

* keep-alive, and pipelining: the requests of one connection are answered in order,
  one at a time (the next waits, parsed, while reading is paused);
* request bodies by ``Content-Length`` or chunked, at most ``max_body`` bytes (beyond:
  :class:`BodyTooLarge` from :meth:`Request.read`, the answer closes the connection);
  ``Expect: 100-continue`` is answered when the handler reads the body; an answer sent
  before the body was all in closes the connection once the body has been read and
  dropped (``LINGER_SECONDS`` at most), so that the client sees the answer;
* ``HEAD`` on every ``GET`` route; 404 and 405 (with ``Allow``) as OpenAI error bodies;
* streamed answers, chunked (close-delimited for HTTP/1.0 clients), with backpressure;
* a client that disconnects cancels its handler (the gateway then closes the backend
  call); idle keep-alive connections are closed after ``keepalive_timeout``;
* a malformed request, too long a URL or too many header bytes: 400/414/431, closed.

Handlers take a :class:`HttpRequest` (also implemented over aiohttp by
:mod:`saga.gateway.aiohttp_front`) and return a :class:`Response`, or the
:class:`ResponseStream` they wrote through.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httptools

from saga.wire.openai_api import error_body

log = logging.getLogger("saga.gateway")

MAX_URL_BYTES = 8190  # as aiohttp's max_line_size
MAX_HEADER_BYTES = 64 * 1024
#: Parsed requests held while an earlier one on the same connection is served.
MAX_PIPELINED = 16
#: After an answer sent before its request's body was all in (a 413, a 401), the rest of
#: the body is read and dropped for at most this long before the connection is closed: a
#: client still sending would otherwise get a reset instead of the answer (as aiohttp's
#: lingering close).
LINGER_SECONDS = 10.0


class BodyTooLarge(Exception):
    """The request body is larger than the server accepts."""


@dataclass(slots=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: Any, status: int = 200,
             headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), headers)


def error(status: int, message: str, kind: str = "invalid_request_error",
          code: str | None = None, headers: Mapping[str, str] | None = None) -> Response:
    """An OpenAI error body."""
    return Response(status, error_body(message, kind, code), headers)


class ResponseStream(Protocol):
    """An answer sent piece by piece (its status and headers are sent already)."""

    status: int

    async def write(self, data: bytes) -> bool:
        """Send ``data``; False if the client has left."""

    async def finish(self) -> None:
        """End the answer (idempotent; the server calls it after the handler)."""


class HttpRequest(Protocol):
    """What a handler sees of a request."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str:
        """Percent-decoded, without the query."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up by lower-case names (a mapping that ignores case is fine)."""

    @property
    def content_length(self) -> int | None: ...

    async def read(self) -> bytes:
        """The whole body; raises :class:`BodyTooLarge`."""

    async def stream(self, status: int, headers: Mapping[str, str]) -> ResponseStream:
        """Send the status and headers of a streamed answer."""


Handler = Callable[[HttpRequest], Awaitable[Response | ResponseStream]]


class RouteTable:
    """Exact paths to handlers by method; ``HEAD`` is served by the ``GET`` handler."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method] = handler

    async def dispatch(self, request: HttpRequest) -> Response | ResponseStream:
        methods = self._routes.get(request.path)
        if methods is None:
            return error(404, "Not Found", code="http_404")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allow = ",".join(sorted({*methods, *(("HEAD",) if "GET" in methods else ())}))
            return error(405, "Method Not Allowed", code="http_405", headers={"Allow": allow})
        return await handler(request)


# ---- wire format --------------------------------------------------------------------------
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode()
        _STATUS_LINES[status] = line
    return line


class _Clock:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            self._header = f"Date: {stamp}\r\nServer: saga\r\n".encode()
        return self._header


_CLOCK = _Clock()


def _header_lines(headers: Mapping[str, str] | None) -> str:
    if not headers:
        return ""
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value:  # never let a value start a header of its own
            value = value.replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def response_head(status: int, headers: Mapping[str, str] | None, *,
                  length: int | None, keep_alive: bool, http10: bool = False) -> bytes:
    """Status line and headers; ``length`` None means chunked (or, for HTTP/1.0
    clients, delimited by closing the connection)."""
    if length is not None:
        framing = f"Content-Length: {length}\r\n"
    elif http10:
        framing = ""
    else:
        framing = "Transfer-Encoding: chunked\r\n"
    if not keep_alive:
        framing += "Connection: close\r\n"
    elif http10:
        framing += "Connection: keep-alive\r\n"
    text = framing + _header_lines(headers) + "\r\n"
    return _status_line(status) + _CLOCK.date() + text.encode()


# ---- one request ------------------------------------------------------------------------------
class _Request:
    """A parsed request head, its body as it arrives, and its answer's state."""

    __slots__ = ("_chunks", "_conn", "_size", "_waiter", "complete", "continue_sent",
                 "expect_continue", "headers", "http10", "keep_alive", "method", "path",
                 "responded", "too_large")

    def __init__(self, conn: _Connection, method: str, path: str, headers: dict[str, str],
                 http10: bool, keep_alive: bool) -> None:
        self._conn = conn
        self.method = method
        self.path = path
        self.headers = headers
        self.http10 = http10
        self.keep_alive = keep_alive
        self.expect_continue = headers.get("expect", "").lower() == "100-continue"
        self.continue_sent = False
        self.complete = False
        self.too_large = False
        self.responded = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        length = self.content_length
        if length is not None and length > conn.server.max_body:
            self.too_large = True

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None and raw.isdigit() else None

    # parser side
    def _feed(self, data: bytes) -> None:
        if self.too_large:
            return
        self._size += len(data)
        if self._size > self._conn.server.max_body:
            self.too_large = True
            self._chunks.clear()
            self._wake()
            return
        self._chunks.append(data)

    def _done(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self, failure: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)

    # handler side
    async def read(self) -> bytes:
        while not (self.complete or self.too_large):
            if self.expect_continue and not self.continue_sent:
                self.continue_sent = True
                self._conn.write(_CONTINUE)
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.too_large:
            raise BodyTooLarge
        return b"".join(self._chunks)

    async def stream(self, status: int, headers: Mapping[str, str]) -> ResponseStream:
        stream = _Stream(self._conn, self, status)
        self.responded = True
        head = response_head(status, headers, length=None,
                             keep_alive=self._conn.keep_alive(self), http10=self.http10)
        self._conn.write(head)
        return stream


class _Stream:
    """A streamed answer on one connection: chunked, or raw for an HTTP/1.0 client."""

    __slots__ = ("_conn", "_finished", "_raw", "status")

    def __init__(self, conn: _Connection, request: _Request, status: int) -> None:
        self._conn = conn
        self._raw = request.http10
        self._finished = False
        self.status = status

    async def write(self, data: bytes) -> bool:
        conn = self._conn
        if conn.closed:
            return False
        if data:
            conn.write(data if self._raw else b"%x\r\n%b\r\n" % (len(data), data))
            if conn.paused:
                return await conn.drain()
        return True

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if not self._raw and not self._conn.closed:
            self._conn.write(b"0\r\n\r\n")


# ---- one connection ----------------------------------------------------------------------------
class _Connection(asyncio.Protocol):
    """Parses requests off one connection and runs their handlers, one at a time."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._head_error: tuple[int, str] | None = None
        self._incoming: _Request | None = None  # the request being parsed
        self._last: _Request | None = None  # the request parsed last
        self._waiting: deque[_Request] = deque()  # parsed, behind the one being served
        self._task: asyncio.Task[None] | None = None
        self._broken: tuple[int, str] | None = None  # a parse error, answered in turn
        self._reading_paused = False
        self._lingering: _Request | None = None  # answered; its body is read and dropped
        self._drain_waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.closed = False
        self.last_active = 0.0

    # transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.last_active = self.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._task is not None:
            self._task.cancel()  # the client left: its handler stops
        for request in (self._incoming, *self._waiting):
            if request is not None:
                request._wake(ConnectionResetError("client disconnected"))
        self._waiting.clear()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        while data and self._broken is None:
            data = self._parse(data)

    def _parse(self, data: bytes) -> bytes:
        """Feed the parser; return what is left to parse after an upgrade request."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Upgrades (h2c, websocket) are not offered: a request without a body is
            # served as plain HTTP/1.1; llhttp has stopped before the body of one with a
            # body, so nothing after it can be parsed.
            last = self._last
            if last is not None and (last.content_length or "transfer-encoding" in last.headers):
                self._fail(400, "HTTP upgrade with a request body is not supported")
                return b""
            return data[int(upgrade.args[0]):]
        except httptools.HttpParserError as failure:
            self._fail(*(self._head_error or (400, f"bad HTTP request: {failure}")))
        return b""

    # parser callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            self._head_error = (414, f"request URL longer than {MAX_URL_BYTES} bytes")
            raise ValueError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._head_error = (431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
            raise ValueError("headers too large")
        key = name.decode("latin-1").lower()
        if key not in self._headers:  # the first of repeated headers, as aiohttp's get()
            self._headers[key] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        if self._lingering is not None:
            return  # the connection closes once the answered body is in: nothing more
        parser = self._parser
        request = _Request(self, parser.get_method().decode("ascii", "replace"),
                           _path(self._url), self._headers,
                           parser.get_http_version() == "1.0", parser.should_keep_alive())
        self._incoming = self._last = request
        if self._task is None and not self._waiting:
            self._start(request)
        else:
            self._waiting.append(request)
            if len(self._waiting) >= MAX_PIPELINED:
                self._pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._incoming is not None:
            self._incoming._feed(body)

    def on_message_complete(self) -> None:
        request = self._incoming
        if request is not None:
            request._done()
            self._incoming = None
            if request is self._lingering:
                self.close()

    # serving
    def _start(self, request: _Request) -> None:
        self._task = self.loop.create_task(self._serve(request))

    async def _serve(self, request: _Request) -> None:
        try:
            result = await self.server.handle(request)
            if isinstance(result, Response):
                self._respond(request, result)
            else:
                await result.finish()
        except asyncio.CancelledError:
            return  # the client left (or the server is stopping): nothing to answer
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            if request.responded:  # a stream cut short: the client sees the connection end
                request.keep_alive = False
            else:
                self._respond(request, error(500, "internal error in the gateway",
                                             "server_error", "internal_error"))
        finally:
            self._task = None
        self._after(request)

    def _respond(self, request: _Request, response: Response) -> None:
        request.responded = True
        body = b"" if request.method == "HEAD" else response.body
        headers = response.headers
        if response.content_type:
            headers = {"Content-Type": response.content_type, **(headers or {})}
        head = response_head(response.status, headers, length=len(response.body),
                             keep_alive=self.keep_alive(request), http10=request.http10)
        self.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.write(body)

    def keep_alive(self, request: _Request) -> bool:
        """Decide, as the answer's head is written, whether the connection stays open:
        not when the client asked to close, nor when the body was not read to its end."""
        request.keep_alive = (request.keep_alive and request.complete
                              and not request.too_large and not self.server.closing)
        return request.keep_alive

    def _after(self, request: _Request) -> None:
        self.last_active = self.loop.time()
        if self.closed:
            return
        if not (request.keep_alive and request.responded):
            if request.complete or self._broken is not None:
                self.close()
            else:
                self._linger(request)
            return
        if self._waiting:
            self._start(self._waiting.popleft())
        elif self._broken is not None:
            self._answer_broken()
        elif self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _linger(self, request: _Request) -> None:
        """Close once the rest of ``request``'s body has come (and been dropped)."""
        request.too_large = True  # drops what comes
        self._lingering = request
        self._waiting.clear()
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.close)

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answered after those before it, then closed."""
        self._broken = (status, message)
        self._pause_reading()
        if self._task is None and not self._waiting:
            self._answer_broken()

    def _answer_broken(self) -> None:
        assert self._broken is not None
        status, message = self._broken
        body = error_body(message, "invalid_request_error", f"http_{status}")
        headers = {"Content-Type": "application/json"}
        self.write(response_head(status, headers, length=len(body), keep_alive=False) + body)
        self.close()

    # I/O helpers
    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def drain(self) -> bool:
        """Wait until the client takes what was written; False if it left."""
        if self.closed:
            return False
        if not self.paused:
            return True
        self._drain_waiter = self.loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
        return not self.closed

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self.closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def idle(self) -> bool:
        return self._task is None and not self._waiting

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


def _path(url: bytes) -> str:
    """The path of a request target (origin or absolute form), query dropped."""
    if not url.startswith(b"/"):
        try:
            url = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            return url.decode("latin-1")
    path = url.split(b"?", 1)[0].decode("utf-8", "surrogateescape")
    if "%" not in path:
        return path
    # an encoded slash stays encoded (as aiohttp/yarl route): it is no path separator
    return urllib.parse.unquote(path.replace("%2F", "%252F").replace("%2f", "%252f"))


# ---- the server -------------------------------------------------------------------------------
class HttpServer:
    """Serves ``handler`` on one listening socket."""

    def __init__(self, handler: Callable[[HttpRequest], Awaitable[Response | ResponseStream]],
                 *, max_body: int, keepalive_timeout: float = 75.0) -> None:
        self.handle = handler
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, loop), host, port, backlog=1024, reuse_address=True
        )
        self._sweeper = loop.create_task(self._sweep_idle())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections with no request for ``keepalive_timeout``."""
        while True:
            await asyncio.sleep(min(5.0, self.keepalive_timeout / 2))
            deadline = asyncio.get_running_loop().time() - self.keepalive_timeout
            for conn in list(self.connections):
                if conn.idle() and conn.last_active < deadline:
                    conn.close()

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, let running requests finish for ``grace`` s, close the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        while any(not c.idle() for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
