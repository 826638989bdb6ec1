"""The OpenAI-compatible request schema and error bodies, shared by gateway and emulator.

Requests are validated once with pydantic; anything malformed becomes a 400 with an
OpenAI-style error body naming the offending field, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from saga.errors import validation_reasons
from saga.wire.prefix import chat_text


class ChatMessage(BaseModel):
    """One chat message; extra fields (name, tool_calls, ...) are passed through."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, description="system, user, assistant, tool, ...")
    content: str | list[dict[str, Any]] | None = Field(None, description="Text or parts.")


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="The model to serve the request.")
    max_tokens: int | None = Field(None, ge=1, description="Output tokens to generate.")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: dict[str, Any] | None = Field(None, description="include_usage, ...")
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported.")
    user: str | None = Field(None, description="End-user id (a workflow fallback).")

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer max_tokens.")

    def output_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def text(self) -> str:
        return chat_text({"role": m.role, "content": m.content} for m in self.messages)


class CompletionRequest(_Common):
    """``POST /v1/completions`` (one prompt string)."""

    prompt: str | list[str] = Field(description="The prompt (a list of one string is accepted).")

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: only a single prompt per request is supported")
        return self

    def output_limit(self, default: int) -> int:
        return self.max_tokens or default

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


Kind = Literal["chat", "completion"]


class BadRequest(Exception):
    """A client error, answered as an OpenAI error body."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error",
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.kind, self.code, self.headers)


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> bytes:
    """An OpenAI error body."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(body).encode()


def error_response(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An OpenAI error body as an aiohttp response (the emulator's server)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def parse_body(raw: bytes, kind: Kind) -> tuple[ChatRequest | CompletionRequest, dict[str, Any]]:
    """Validate a request body; return the typed request and the raw dict."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(400, f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise BadRequest(400, "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "request body must be a JSON object")
    model: type[ChatRequest | CompletionRequest] = (
        ChatRequest if kind == "chat" else CompletionRequest
    )
    try:
        return model.model_validate(data), data
    except ValidationError as error:
        raise BadRequest(400, _validation_message(error)) from None


def _validation_message(error: ValidationError) -> str:
    return "invalid request: " + validation_reasons(error, root="body", limit=3)
