"""The gateway's OpenAPI 3.0 document (``GET /openapi.json``), built from its pydantic models.

Request bodies are the schemas of :mod:`saga.wire.openai_api` (with this gateway's
limits: ``max_tokens`` at most ``max_output_tokens``); every error is the OpenAI
error body. It is what ``schemathesis`` fuzzes the gateway against
(``scripts/reliability.py``).
"""

from __future__ import annotations

from typing import Any

from saga.gateway.config import GatewayConfig
from saga.wire.openai_api import ChatRequest, CompletionRequest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}

_ERRORS = {
    "400": "Malformed JSON, a schema violation (the field is named), a bad header, "
    "max_tokens above the limit.",
    "401": "Missing or unknown API key.",
    "404": "Unknown model.",
    "413": "Body larger than max_body_bytes.",
    "429": "Admission refused, or the gateway is at a queue bound (see Retry-After).",
    "502": "The backend failed (after the retries the budget allowed).",
    "503": "No backend is up.",
    "504": "The backend timed out.",
}

_HEADERS = [
    ("x-saga-workflow", "Workflow id (scoped by tenant); at most 256 printable characters.",
     {"type": "string", "maxLength": 256}),
    ("x-saga-agent", "Agent program (default: default).", {"type": "string", "maxLength": 256}),
    ("x-saga-tool", "Tool that ran before this call.", {"type": "string", "maxLength": 256}),
    ("x-saga-end", "true on the workflow's last call.",
     {"type": "string", "enum": ["true", "false"]}),
]


def _schema(model: type[ChatRequest | CompletionRequest], limit: int,
            components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = _nullable(sub)
    for field in ("max_tokens", "max_completion_tokens"):
        prop = schema.get("properties", {}).get(field)
        if prop is not None:
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "integer":
                    option["maximum"] = limit
    out: dict[str, Any] = _nullable(schema)
    return out


def _nullable(schema: Any) -> Any:
    """JSON Schema's ``anyOf [X, null]`` as OpenAPI 3.0's ``nullable``, recursively."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable(v) for k, v in schema.items()}
    options = out.get("anyOf")
    if isinstance(options, list) and any(o == {"type": "null"} for o in options):
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    return out


def _operation(summary: str, body_ref: str | None, streams: bool) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": ok},
            **{code: {"description": text,
                      "content": {"application/json": {"schema": {
                          "$ref": "#/components/schemas/Error"}}}}
               for code, text in _ERRORS.items()},
        },
    }
    if body_ref is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
            "$ref": body_ref}}}}
        op["parameters"] = [
            {"name": name, "in": "header", "required": False, "description": text,
             "schema": schema}
            for name, text, schema in _HEADERS
        ]
    return op


def openapi_document(config: GatewayConfig) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of a gateway with ``config``."""
    components: dict[str, Any] = {"Error": _ERROR}
    limit = config.max_output_tokens
    components["ChatRequest"] = _schema(ChatRequest, limit, components)
    components["CompletionRequest"] = _schema(CompletionRequest, limit, components)
    secured: list[dict[str, list[str]]] = [{"bearer": []}] if config.tenants else []
    chat = _operation("Chat completion (plain or SSE)", "#/components/schemas/ChatRequest", True)
    completion = _operation("Text completion (plain or SSE)",
                            "#/components/schemas/CompletionRequest", True)
    models = _operation("Models served", None, False)
    for op in (chat, completion, models):
        op["security"] = secured
    return {
        "openapi": "3.0.3",
        "info": {"title": "SAGA gateway", "version": "0.1.0",
                 "description": "OpenAI-compatible gateway with workflow-atomic scheduling."},
        "servers": [{"url": "/"}],
        "paths": {
            "/v1/chat/completions": {"post": chat},
            "/v1/completions": {"post": completion},
            "/v1/models": {"get": models},
            "/health": {"get": {"summary": "200 while a backend is up", "responses": {
                "200": {"description": "up", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "503": {"description": "no backend up", "content": {"application/json": {
                    "schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
