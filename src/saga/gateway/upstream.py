"""Keep-alive HTTP/1.1 connections to one backend, for forwarding calls.

The gateway's hot path (see :mod:`saga.gateway.server` for why not aiohttp). A call takes
the most recently used idle connection, or opens one, writes its request in one write,
and returns once the answer's head is in; :class:`UpstreamResponse` then gives the body
whole (:meth:`~UpstreamResponse.read`) or as it arrives, cut at line ends
(:meth:`~UpstreamResponse.read_lines`, for server-sent events). A connection goes back to
the pool only when its answer was read to the end and the server keeps it alive;
:meth:`~UpstreamResponse.close` closes it, which is how a backend learns that the client
left. ``timeout`` bounds a whole call (connect, send, last byte). A call sent on a reused
connection that the server had closed meanwhile (no byte of an answer came back) is sent
once more on a new connection, as browsers do.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import cast

import httptools

#: Body bytes buffered ahead of a slow reader before the backend is paused.
HIGH_WATER = 1 << 20


class UpstreamError(Exception):
    """The backend could not be reached, or its connection failed before the answer ended."""


class _Stale(UpstreamError):
    """A reused connection was closed by the server before it answered anything."""


class UpstreamResponse:
    """One answer: ``status`` and ``headers`` (lower-case names) once the head is in."""

    __slots__ = ("_chunks", "_conn", "_error", "_size", "_timer", "_waiter", "complete",
                 "has_head", "headers", "keep_alive", "received", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.has_head = False
        self.complete = False
        self.received = False  # any byte of the answer
        self._chunks: list[bytes] = []
        self._size = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    # reader side
    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def wait_head(self) -> None:
        while not self.has_head:
            await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            await self._wait()
        return b"".join(self._chunks)

    async def read_lines(self) -> bytes | None:
        """The body received since the last call, up to its last line end (at the end of
        the body: whatever is left); None once it has all been returned."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                cut = len(data) if self.complete else data.rfind(b"\n") + 1
                if cut:
                    self._take(data, cut)
                    return data[:cut]
            if self.complete:
                return None
            await self._wait()

    def _take(self, data: bytes, cut: int) -> None:
        rest = data[cut:]
        self._chunks = [rest] if rest else []
        self._size = len(rest)
        if self._size < HIGH_WATER:
            self._conn.resume_reading()

    def release(self) -> None:
        """The answer was read: the connection goes back to the pool if it can."""
        self._stop_timer()
        self._conn.done(self, reusable=self.complete and self.keep_alive)

    def close(self) -> None:
        """Close the connection (the backend sees the call abandoned)."""
        self._stop_timer()
        self._conn.done(self, reusable=False)

    # connection side
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _end(self) -> None:
        self.complete = True
        self._stop_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._stop_timer()
        self._wake()

    def _start_timer(self, deadline: float) -> None:
        self._timer = self._conn.loop.call_at(deadline, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError("backend call timed out"))
        self._conn.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one call at a time."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.uses = 0
        self.idle_since = 0.0
        self._reading_paused = False

    def send(self, payload: bytes, deadline: float) -> UpstreamResponse:
        assert self._transport is not None
        response = UpstreamResponse(self)
        response._start_timer(deadline)
        self.response = response
        self.uses += 1
        self._transport.write(payload)
        return response

    def done(self, response: UpstreamResponse, reusable: bool) -> None:
        if self.response is not response:
            return
        self.response = None
        if reusable and not self.closed:
            self.pool._put(self)
        else:
            self.close()

    # transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: a server that talks out of turn
            self.close()
            return
        response.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            response._fail(UpstreamError(f"bad HTTP answer: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        response = self.response
        if response is None or response.complete:
            return
        if response.has_head and _delimited_by_close(response.headers):
            response._end()  # a body that ends with the connection
        elif not response.received and self.uses > 1:
            response._fail(_Stale("connection closed by the server"))
        else:
            response._fail(UpstreamError(f"connection lost: {exc or 'closed by the server'}"))

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self._parser.get_status_code()
        response.keep_alive = self._parser.should_keep_alive()
        response.has_head = True
        response._wake()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._end()

    # flow control and closing
    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self.closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self.closed:
            self._reading_paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self.pool._forget(self)
            self._transport.close()


def _delimited_by_close(headers: Mapping[str, str]) -> bool:
    return "content-length" not in headers and "chunked" not in headers.get(
        "transfer-encoding", "").lower()


class UpstreamPool:
    """Keep-alive connections to the server at ``url`` (``http`` or ``https``; a path
    in the URL prefixes every request's)."""

    def __init__(self, url: str, *, connect_timeout: float, timeout: float | None,
                 max_idle: int = 256, idle_timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        self._ssl: ssl.SSLContext | None = None
        self._base = parts.path.rstrip("/")
        default_port = self.port == (443 if self._tls else 80)
        self._host_header = parts.netloc.rpartition("@")[2] if not default_port else self.host
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._loop: asyncio.AbstractEventLoop | None = None  # its connections' loop
        self._idle: list[_Connection] = []  # most recently used last
        self._busy: set[_Connection] = set()
        self.connects = 0  # connections opened, for tests and tuning

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> UpstreamResponse:
        """Send a request; return once the answer's head is in. Raises
        :class:`UpstreamError` (unreachable, connection lost) or :class:`TimeoutError`.
        A pool serves one event loop at a time (its connections belong to it)."""
        loop = self._loop
        if loop is None or loop.is_closed():  # asking for the running loop costs a getpid()
            loop = self._loop = asyncio.get_running_loop()
        limit = timeout if timeout is not None else self.timeout
        deadline = loop.time() + (limit if limit is not None else 1e9)
        payload = self._head(method, path, headers, len(body)) + body
        conn = self._take_idle(loop.time())
        if conn is not None:
            try:
                return await self._send(conn, payload, deadline)
            except _Stale:
                pass  # the server closed it as we sent: once more on a new connection
        conn = await self._connect(loop, deadline)
        return await self._send(conn, payload, deadline)

    async def _send(self, conn: _Connection, payload: bytes, deadline: float) -> UpstreamResponse:
        self._busy.add(conn)
        response = conn.send(payload, deadline)
        try:
            await response.wait_head()
        except BaseException:
            response.close()
            raise
        return response

    def _head(self, method: str, path: str, headers: Mapping[str, str] | None,
              length: int) -> bytes:
        lines = [f"{method} {self._base}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}\r\n")
        if headers:
            lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        lines.append("\r\n")
        return "".join(lines).encode()

    def _take_idle(self, now: float) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        limit = max(0.0, min(self.connect_timeout, deadline - loop.time()))
        if self._tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop), self.host, self.port,
                    ssl=self._ssl if self._tls else None,
                )
        except TimeoutError:
            raise TimeoutError(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as error:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {error}") from None
        self.connects += 1
        return conn

    def _put(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Close every connection (calls in flight fail)."""
        for conn in [*self._idle, *self._busy]:
            conn.close()
