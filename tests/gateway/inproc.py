"""Requests handed straight to ``Gateway.handle`` (what it reads of an HTTP request)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web


class Get:
    def __init__(self, path: str, headers: Mapping[str, str] | None = None) -> None:
        self.method = "GET"
        self.path = path
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.content_length: int | None = 0
        self._body = b""

    async def read(self) -> bytes:
        return self._body

    async def stream(self, status: int, headers: Mapping[str, str]) -> object:
        raise AssertionError("these tests ask for whole answers")


class Post(Get):
    def __init__(self, path: str, body: dict[str, Any],
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(path, {"content-type": "application/json", **(headers or {})})
        self.method = "POST"
        self._body = json.dumps(body).encode()
        self.content_length = len(self._body)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": content}],
            **extra}


async def fake_openai(host: str, status: int = 200,
                      on_call: Callable[[], None] | None = None) -> tuple[web.AppRunner, str]:
    """A one-route OpenAI-style backend on ``host`` (any free port) answering every chat
    call with ``status`` (a one-token answer when 200, an error body otherwise) and
    ``/health``; ``on_call`` runs for each call. The runner (to clean up) and its URL."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        if on_call is not None:
            on_call()
        await request.read()
        if status != 200:
            return web.json_response({"error": {"message": "boom"}}, status=status)
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"
