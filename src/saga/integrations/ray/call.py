"""A call as it crosses Ray: what the ingress read of an OpenAI request.

The ingress (a Serve deployment in front of the replicas) reads the workflow identity
the way SAGA's gateway does -- the same header parsing (``x-saga-workflow``,
``x-saga-agent``, ``x-saga-tool``, ``x-saga-end``) and the same fallbacks (the body's
``user``, else a hash of the conversation's start) -- and hands a :class:`RayCall` to
the replicas' deployment handle. The request routers read it from the pending
request's arguments: SAGA's router its identity and KV runs, Ray's
``PrefixCacheAffinityRouter`` its ``messages``, ``ConsistentHashRouter`` the session
id the ingress sets to the workflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saga.engine.kvcache import Run
from saga.gateway.app import Gateway, _flag, _name
from saga.wire.openai_api import ChatRequest, CompletionRequest, Kind, parse_body
from saga.wire.prefix import estimate_tokens, text_runs

#: What a call asks at most when its body names no limit (the gateway's default).
DEFAULT_MAX_TOKENS = 256


@dataclass(slots=True)
class RayCall:
    """One call, as the routers and the replicas read it (picklable plain data)."""

    workflow: str
    tenant: str
    agent: str
    tool: str | None
    ends: bool
    kind: Kind
    model: str
    #: The prompt as chat messages (a completion's prompt is one user message): what
    #: Ray's prefix-affinity router matches on.
    messages: list[dict[str, Any]]
    prompt_tokens: int
    runs: tuple[Run, ...]
    max_tokens: int
    #: The OpenAI body, for a replica that forwards it (vLLM); the emulator ignores it.
    body: dict[str, Any] = field(default_factory=dict)


def read_call(
    headers: Mapping[str, str], raw: bytes, kind: Kind, tenant: str, block_tokens: int,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> RayCall:
    """The call an OpenAI request makes (raises ``BadRequest`` as the gateway does)."""
    body, data = parse_body(raw, kind)
    workflow = f"{tenant}/{workflow_id(_name(headers, 'x-saga-workflow'), body)}"
    text = body.text()
    if isinstance(body, ChatRequest):
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
    else:
        messages = [{"role": "user", "content": text}]
    data.pop("stream", None)
    data.pop("stream_options", None)
    return RayCall(
        workflow=workflow, tenant=tenant, agent=_name(headers, "x-saga-agent") or "default",
        tool=_name(headers, "x-saga-tool") or None,
        ends=_flag(headers.get("x-saga-end"), "x-saga-end"), kind=kind, model=body.model,
        messages=messages, prompt_tokens=estimate_tokens(text),
        runs=text_runs(text, block_tokens), max_tokens=body.output_limit(default_max_tokens),
        body=data,
    )


def workflow_id(header: str | None, body: ChatRequest | CompletionRequest) -> str:
    """The gateway's rule (:meth:`saga.gateway.app.Gateway._workflow_id`), reused as is:
    the header, else ``user:`` + the body's user, else ``auto:`` + a hash of the start."""
    return Gateway._workflow_id(None, header, body)  # type: ignore[arg-type]
