"""The gateway's HTTP/1.1 server (saga.gateway.server) on raw sockets: framing, limits,
keep-alive, pipelining, streaming and clients that leave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from saga.gateway.server import (
    BodyTooLarge,
    HttpRequest,
    HttpServer,
    Response,
    ResponseStream,
    RouteTable,
)

pytestmark = pytest.mark.timeout(30)

MAX_BODY = 1024


class Log:
    """What the handlers saw."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.stream_cancelled = asyncio.Event()
        self.stream_writes_failed = 0


def _router(log: Log) -> RouteTable:
    async def echo(http: HttpRequest) -> Response:
        try:
            body = await http.read()
        except BodyTooLarge:
            return Response(413, b'{"error": "too large"}')
        log.bodies.append(body)
        return Response.json({"path": http.path, "body": body.decode(),
                              "x": http.headers.get("x-test")})

    async def hello(http: HttpRequest) -> Response:
        return Response(200, b"hello", content_type="text/plain")

    async def events(http: HttpRequest) -> ResponseStream:
        stream = await http.stream(200, {"Content-Type": "text/event-stream"})
        try:
            for i in range(3):
                await stream.write(f"data: {i}\n\n".encode())
            while True:  # until the client leaves
                await asyncio.sleep(0.01)
                if not await stream.write(b": ping\n\n"):
                    log.stream_writes_failed += 1
                    return stream
        except asyncio.CancelledError:
            log.stream_cancelled.set()
            raise

    async def short(http: HttpRequest) -> ResponseStream:
        stream = await http.stream(200, {"Content-Type": "text/plain"})
        await stream.write(b"one,")
        await stream.write(b"two")
        return stream  # the server finishes it

    router = RouteTable()
    router.add("POST", "/echo", echo)
    router.add("GET", "/hello", hello)
    router.add("GET", "/events", events)
    router.add("GET", "/short", short)
    return router


Body = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Log], Awaitable[None]]


def _run(scenario: Body) -> Log:
    async def main() -> Log:
        log = Log()
        server = HttpServer(_router(log).dispatch, max_body=MAX_BODY)
        await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            await scenario(reader, writer, log)
        finally:
            writer.close()
            await server.close(grace=1.0)
        return log

    return asyncio.run(main())


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names) and the body (by length or
    chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
    return status, headers, body


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def test_bad_request_line_is_a_400_and_the_connection_closes() -> None:
    seen: dict[str, Any] = {}

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        writer.write(b"HELLO THERE\r\n\r\n")
        seen["status"], seen["headers"], body = await _response(reader)
        seen["error"] = json.loads(body)["error"]
        seen["closed"] = await _closed(reader)

    _run(scenario)
    assert seen["status"] == 400
    assert seen["headers"]["connection"] == "close"
    assert seen["error"]["message"].startswith("bad HTTP request")
    assert seen["closed"]


def test_too_many_header_bytes_is_a_431() -> None:
    seen: list[int] = []

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        big = "".join(f"x-h{i}: {'v' * 1000}\r\n" for i in range(80))
        writer.write(f"GET /hello HTTP/1.1\r\n{big}\r\n".encode())
        seen.append((await _response(reader))[0])

    _run(scenario)
    assert seen == [431]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_a_413_and_the_connection_closes(chunked: bool) -> None:
    seen: dict[str, Any] = {}

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        data = b"x" * (MAX_BODY + 1)
        if chunked:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
        else:
            writer.write(_post("/echo", data))
        seen["status"], seen["headers"], _ = await _response(reader)
        seen["closed"] = await _closed(reader)

    log = _run(scenario)
    assert seen["status"] == 413
    assert seen["headers"]["connection"] == "close" and seen["closed"]
    assert log.bodies == []


def test_an_early_answer_is_readable_while_the_body_is_still_coming() -> None:
    """A client that sends its whole (too large) body before reading, as urllib does,
    gets the 413 rather than a reset: the server drops the body, then closes."""
    seen: dict[str, Any] = {}

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        size = 64 * MAX_BODY
        writer.write(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n"
                     .encode())
        await writer.drain()
        await asyncio.sleep(0.2)  # the 413 is sent now, before the body
        for _ in range(8):
            writer.write(b"x" * (size // 8))
            await writer.drain()
            await asyncio.sleep(0.01)
        seen["status"], seen["headers"], _ = await _response(reader)
        seen["closed"] = await _closed(reader)

    _run(scenario)
    assert seen["status"] == 413 and seen["headers"]["connection"] == "close"
    assert seen["closed"]


def test_chunked_body_is_decoded() -> None:
    seen: list[dict[str, Any]] = []

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the body arrives in two pieces
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body = await _response(reader)
        assert status == 200
        seen.append(json.loads(body))

    log = _run(scenario)
    assert seen == [{"path": "/echo", "body": "hello world", "x": None}]
    assert log.bodies == [b"hello world"]


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    seen: list[tuple[int, str]] = []

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        for i in range(3):
            writer.write(_post("/echo?q=1", f"call {i}".encode(), f"X-Test: {i}\r\n"))
            status, headers, body = await _response(reader)
            assert "connection" not in headers  # HTTP/1.1: open by default
            seen.append((status, json.loads(body)["body"]))
        writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, body = await _response(reader)
        seen.append((status, body.decode()))
        assert headers["connection"] == "close" and await _closed(reader)

    _run(scenario)
    assert seen == [(200, "call 0"), (200, "call 1"), (200, "call 2"), (200, "hello")]


def test_pipelined_requests_are_answered_in_order() -> None:
    seen: list[str] = []

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        writer.write(b"".join(_post("/echo", f"p{i}".encode()) for i in range(5))
                     + b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n"
                     + _post("/echo", b"last"))
        for _ in range(5):
            seen.append(json.loads((await _response(reader))[2])["body"])
        seen.append((await _response(reader))[2].decode())
        seen.append(json.loads((await _response(reader))[2])["body"])

    _run(scenario)
    assert seen == ["p0", "p1", "p2", "p3", "p4", "one,two", "last"]


def test_routes_head_404_405_and_expect_continue() -> None:
    seen: dict[str, Any] = {}

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        writer.write(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        seen["head"] = head.decode()
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
        seen["404"] = await _response(reader)
        writer.write(b"DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        seen["405"] = await _response(reader)
        writer.write(b"GET /%68ello HTTP/1.1\r\nHost: t\r\n\r\n")  # /hello, encoded
        seen["decoded"] = await _response(reader)
        writer.write(b"GET /v1%2Fhello HTTP/1.1\r\nHost: t\r\n\r\n")
        seen["slash"] = await _response(reader)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        seen["continue"] = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"ok")
        seen["after"] = await _response(reader)

    _run(scenario)
    assert seen["head"].startswith("HTTP/1.1 200 OK\r\n")
    assert "Content-Length: 5\r\n" in seen["head"]
    status, _, body = seen["404"]
    assert status == 404 and json.loads(body)["error"]["code"] == "http_404"
    status, headers, body = seen["405"]
    assert status == 405 and headers["allow"] == "POST"
    assert seen["decoded"][0] == 200 and seen["slash"][0] == 404
    assert seen["continue"] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert json.loads(seen["after"][2])["body"] == "ok"


def test_http10_client_gets_a_closed_connection() -> None:
    seen: dict[str, Any] = {}

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        writer.write(b"GET /short HTTP/1.0\r\n\r\n")
        seen["status"], seen["headers"], seen["body"] = await _response(reader)

    _run(scenario)
    assert seen["status"] == 200 and seen["body"] == b"one,two"  # delimited by the close
    assert "transfer-encoding" not in seen["headers"]


def test_a_client_leaving_mid_stream_stops_its_handler() -> None:
    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       log: Log) -> None:
        writer.write(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Transfer-Encoding: chunked" in head
        assert b"data: 0" in await asyncio.wait_for(reader.read(1024), 5)
        writer.close()
        await asyncio.wait_for(log.stream_cancelled.wait(), 5)

    log = _run(scenario)
    assert log.stream_cancelled.is_set()
    assert log.stream_writes_failed == 0  # cancelled, not left writing into the void
