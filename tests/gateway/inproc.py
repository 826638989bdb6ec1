"""Requests handed straight to ``Gateway.handle`` (what it reads of an HTTP request)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


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
