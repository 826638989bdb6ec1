"""The gateway's backend client (saga.gateway.upstream) against scripted servers, and the
gateway forwarding through it: connection reuse, streaming, failures and timeouts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.gateway.server import HttpServer
from saga.gateway.upstream import UpstreamError, UpstreamPool

pytestmark = pytest.mark.timeout(30)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server that runs ``script`` on each connection; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def _answer(body: bytes, status: int = 200, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%b\r\n" % (status, len(body), extra)
            + body)


async def _keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        request = await _read_request(reader)
        writer.write(_answer(b"echo:" + request.split(b"\r\n\r\n", 1)[1]))


def test_connections_are_reused_and_requests_carry_host_and_length() -> None:
    async def main() -> tuple[list[bytes], int, int, int]:
        seen: list[bytes] = []

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                request = await _read_request(reader)
                seen.append(request)
                writer.write(_answer(b"ok"))

        backend = Scripted(script)
        async with backend as url:
            pool = UpstreamPool(url + "/base", connect_timeout=1, timeout=5)
            bodies = []
            for i in range(4):
                response = await pool.request("POST", "/v1/x", f"b{i}".encode(),
                                              {"X-A": "1"})
                bodies.append(await response.read())
                response.release()
            assert bodies == [b"ok"] * 4
            pool.close()
            return seen, backend.connections, pool.connects, pool.idle

    seen, connections, connects, idle = asyncio.run(main())
    assert connections == connects == 1
    assert idle == 0  # closed
    head = seen[3].decode()
    assert head.startswith("POST /base/v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert "Content-Length: 2\r\n" in head and "X-A: 1\r\n" in head and head.endswith("b3")


def test_an_abandoned_answer_closes_its_connection() -> None:
    async def main() -> tuple[int, int]:
        backend = Scripted(_keep_alive)
        async with backend as url:
            pool = UpstreamPool(url, connect_timeout=1, timeout=5)
            first = await pool.request("POST", "/", b"a")
            first.close()  # the client left: the backend must see the call end
            second = await pool.request("POST", "/", b"b")
            assert await second.read() == b"echo:b"
            second.release()
            return backend.connections, pool.connects

    assert asyncio.run(main()) == (2, 2)


def test_a_stale_keep_alive_connection_is_replaced_once() -> None:
    async def main() -> tuple[list[bytes], int]:
        async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(_answer(b"ok"))
            await writer.drain()
            # then close without saying so (as a server's keep-alive timeout does)

        backend = Scripted(one_answer)
        async with backend as url:
            pool = UpstreamPool(url, connect_timeout=1, timeout=5)
            out = []
            for _ in range(3):
                response = await pool.request("POST", "/", b"x")
                out.append(await response.read())
                response.release()
                await asyncio.sleep(0)  # the close may or may not have arrived yet
            return out, backend.connections

    bodies, connections = asyncio.run(main())
    assert bodies == [b"ok"] * 3 and connections == 3


def test_unreachable_lost_and_slow_backends_fail_clearly() -> None:
    async def main() -> list[str]:
        out = []
        pool = UpstreamPool("http://127.0.0.1:9", connect_timeout=1, timeout=5)
        try:
            await pool.request("POST", "/", b"x")
        except UpstreamError as error:
            out.append("unreachable: " + str(error)[:21])

        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")

        async with Scripted(cut) as url:
            response = await UpstreamPool(url, connect_timeout=1, timeout=5).request("POST", "/")
            try:
                await response.read()
            except UpstreamError as error:
                out.append("lost: " + str(error)[:15])

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            await asyncio.sleep(10)

        async with Scripted(silent) as url:
            try:
                await UpstreamPool(url, connect_timeout=1, timeout=0.2).request("POST", "/")
            except TimeoutError:
                out.append("timeout")
        return out

    assert asyncio.run(main()) == ["unreachable: cannot connect to 127",
                                   "lost: connection lost", "timeout"]


def test_streamed_answer_comes_in_whole_lines() -> None:
    async def main() -> list[bytes]:
        async def events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"data: 1\n\nda", b"ta: 2\n", b"\n", b"data: [DONE]\n\ntail"):
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")
            await _read_request(reader)  # keep-alive: wait for more

        async with Scripted(events) as url:
            pool = UpstreamPool(url, connect_timeout=1, timeout=5)
            response = await pool.request("POST", "/")
            pieces = []
            while (piece := await response.read_lines()) is not None:
                pieces.append(piece)
            response.release()
            assert pool.idle == 1  # read to its end: back in the pool
            return pieces

    pieces = asyncio.run(main())
    assert all(p.endswith(b"\n") for p in pieces[:-1]) and pieces[-1] == b"tail"
    assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\ntail"


# ---- through the gateway -------------------------------------------------------------------
def _gateway_config(urls: list[str], **extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "policy": "vllm-rr", "cluster": "test-2", "retries": 0, "health_interval": 60,
        "backends": [{"url": u, "kind": "openai"} for u in urls], **extra,
    })


async def _with_gateway(config: GatewayConfig,
                        body: Callable[[str, Gateway], Awaitable[None]]) -> None:
    gateway = Gateway(config)
    server = HttpServer(gateway.handle, max_body=config.max_body_bytes)
    await gateway.start()
    await server.start("127.0.0.1", 0)
    try:
        await body(f"http://127.0.0.1:{server.port}", gateway)
    finally:
        await server.close(grace=1)
        await gateway.stop()


def _compact(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()  # not as json.dumps writes


async def _chat(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    pool = UpstreamPool(url, connect_timeout=1, timeout=10)
    response = await pool.request("POST", "/v1/chat/completions", _compact(payload),
                                  {"Content-Type": "application/json"})
    body = await response.read()
    response.release()
    pool.close()
    return response.status, response.headers, body


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_gateway_reuses_backend_connections_and_forwards_the_body_unchanged() -> None:
    seen: list[bytes] = []

    async def backend_script(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            if request.startswith(b"GET /health"):
                writer.write(_answer(b"{}"))
                continue
            seen.append(request.split(b"\r\n\r\n", 1)[1])
            writer.write(_answer(json.dumps({"choices": [], "usage": {"total_tokens": 5}})
                                 .encode(), extra=b"Content-Type: application/json\r\n"))

    async def main() -> tuple[list[int], int]:
        async with Scripted(backend_script) as url:
            statuses: list[int] = []

            async def body(gw_url: str, gateway: Gateway) -> None:
                for _ in range(5):
                    status, headers, _ = await _chat(gw_url, {**CHAT, "x": [1, 2]})
                    statuses.append(status)
                    assert headers["x-saga-backend"] == "0"
                await _chat(gw_url, {**CHAT, "priority": -5})  # stripped: body re-encoded
                statuses.append(gateway.backends[0].pool.connects)

            await _with_gateway(_gateway_config([url]), body)
            return statuses, len(seen)

    statuses, calls = asyncio.run(main())
    assert statuses == [200] * 5 + [1]  # one backend connection for six calls
    assert calls == 6
    assert json.loads(seen[0]) == {**CHAT, "x": [1, 2]}
    assert seen[0] == _compact({**CHAT, "x": [1, 2]})  # the client's own bytes
    assert "priority" not in json.loads(seen[5])


@pytest.mark.parametrize("failure", ["refused", "hang-up", "garbage"])
def test_gateway_answers_502_when_the_backend_fails(failure: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            if request.startswith(b"GET /health"):
                writer.write(_answer(b"{}"))
                continue
            if failure == "garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            return  # closed without an answer

    async def main() -> tuple[int, dict[str, Any], bool]:
        backend = Scripted(hang_up)
        async with backend as url:
            result: dict[str, Any] = {}

            async def body(gw_url: str, gateway: Gateway) -> None:
                assert gateway.views[0].up  # its health check passed
                if failure == "refused" and backend.server is not None:
                    backend.server.close()  # gone after its health check
                    await backend.server.wait_closed()
                status, _, raw = await _chat(gw_url, CHAT)
                result.update(status=status, error=json.loads(raw)["error"],
                              up=gateway.views[0].up)

            await _with_gateway(_gateway_config([url]), body)
            return result["status"], result["error"], result["up"]

    status, error, up = asyncio.run(main())
    assert status == 502
    assert error["type"] == "backend_error"
    assert error["code"] == "backend_unreachable"
    assert not up  # marked down until a health check passes


def test_gateway_streams_through_and_counts_usage_it_strips() -> None:
    async def events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            if request.startswith(b"GET /health"):
                writer.write(_answer(b"{}"))
                continue
            assert json.loads(request.split(b"\r\n\r\n", 1)[1])["stream_options"] == {
                "include_usage": True}
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
                          b'data: {"choices": [], "usage": {"total_tokens": 9}}\n\n',
                          b"data: [DONE]\n\n"):
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")

    async def main() -> tuple[int, bytes, float]:
        async with Scripted(events) as url:
            out: dict[str, Any] = {}

            async def body(gw_url: str, gateway: Gateway) -> None:
                status, headers, raw = await _chat(gw_url, {**CHAT, "stream": True})
                assert headers["content-type"] == "text/event-stream"
                tenant_tokens = await gateway.store.tenant_tokens()
                out.update(status=status, raw=raw, tokens=tenant_tokens.get("default", 0))

            await _with_gateway(_gateway_config([url]), body)
            return out["status"], out["raw"], out["tokens"]

    status, raw, tokens = asyncio.run(main())
    assert status == 200
    assert b'"content": "a"' in raw and raw.rstrip().endswith(b"data: [DONE]")
    assert b"usage" not in raw  # the client did not ask for it
    assert tokens == 9



def test_the_aiohttp_front_serves_the_same_api() -> None:
    """``Gateway.app()`` (an aiohttp application, for embedding) answers as the fast
    server does: plain and streamed calls, 404 and 413 as OpenAI error bodies."""
    from aiohttp import web

    async def backend_script(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            if request.startswith(b"GET /health"):
                writer.write(_answer(b"{}"))
            elif b'"stream": true' in request:  # re-encoded: stream_options added
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            else:
                writer.write(_answer(b'{"usage": {"total_tokens": 2}}'))

    async def main() -> list[tuple[int, bytes]]:
        async with Scripted(backend_script) as url:
            gateway = Gateway(_gateway_config([url], max_body_bytes=2048))
            runner = web.AppRunner(gateway.app(), handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            gw_url = f"http://{host}:{port}"
            try:
                out = [(s, b) for s, _, b in [
                    await _chat(gw_url, CHAT),
                    await _chat(gw_url, {**CHAT, "stream": True}),
                    await _chat(gw_url, {**CHAT, "messages": [
                        {"role": "user", "content": "x" * 4000}]}),
                ]]
                pool = UpstreamPool(gw_url, connect_timeout=1, timeout=5)
                response = await pool.request("GET", "/nowhere")
                out.append((response.status, await response.read()))
                response.release()
                pool.close()
                return out
            finally:
                await runner.cleanup()

    (plain, streamed, too_large, missing) = asyncio.run(main())
    assert plain == (200, b'{"usage": {"total_tokens": 2}}')
    assert streamed == (200, b"data: [DONE]\n\n")
    assert too_large[0] == 413 and json.loads(too_large[1])["error"]["code"] == "body_too_large"
    assert missing[0] == 404 and json.loads(missing[1])["error"]["code"] == "http_404"
