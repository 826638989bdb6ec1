"""A misbehaving OpenAI backend for fault tests: ``python fake_backend.py PORT MODE``.

MODE ``500`` answers every call 500; ``slow`` answers after 30 s; ``echo`` answers at
once and records what it received; ``llamacpp DIR`` answers at once and does what
llama.cpp's server does with slot actions (``POST /slots/{id}?action=save`` writes the
named file, 1000 bytes, into DIR; restore and erase touch nothing). ``GET /_seen``
returns the calls counted and the last body and headers; ``GET /health`` is always 200.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    seen: dict[str, Any] = {"hits": 0, "body": None, "headers": None}

    async def call(http: web.Request) -> web.Response:
        seen["hits"] += 1
        seen["body"] = json.loads(await http.read())
        seen["headers"] = dict(http.headers)
        if mode == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "slow":
            await asyncio.sleep(30)
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def report(_: web.Request) -> web.Response:
        return web.json_response(seen)

    async def slots(http: web.Request) -> web.Response:
        action = http.query.get("action", "")
        payload = json.loads(await http.read() or b"{}")
        seen.setdefault("slot_actions", []).append(action)
        if action == "save" and len(sys.argv) > 3:
            name = str(payload.get("filename", ""))
            if "/" in name or not name:
                return web.json_response({"error": "bad filename"}, status=400)
            (Path(sys.argv[3]) / name).write_bytes(b"k" * 1000)
        return web.json_response({"id_slot": int(http.match_info["slot"])})

    app = web.Application()
    app.router.add_post("/slots/{slot}", slots)
    app.router.add_post("/v1/chat/completions", call)
    app.router.add_get("/health", health)
    app.router.add_get("/_seen", report)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
