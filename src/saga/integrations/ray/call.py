"""A call as it crosses Ray: what the ingress read of an OpenAI request.

The ingress (a Serve deployment in front of the replicas) reads the workflow identity
with the gateway's own rule (:func:`saga.gateway.identity.identify`: ``x-saga-*``
headers first, then what standard clients send, then the conversation's start) and
hands a :class:`RayCall` to
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
from saga.gateway.identity import identify
from saga.wire.openai_api import ChatRequest, Kind, parse_body
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
    #: SAGA's retention decision, carried to the replica: Ray replica id -> seconds to
    #: keep this call's KV once it ends (``saga_ttl``). Set by the router when it routes
    #: the call: the pin its policy decided for the workflow's last call on that replica
    #: (the decision comes after a call ends, so it rides the next one, as the gateway
    #: sends it to vLLM); a replica applies only its own entry.
    ttl_hints: dict[str, float] = field(default_factory=dict)


def read_call(
    headers: Mapping[str, str], raw: bytes, kind: Kind, tenant: str, block_tokens: int,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> RayCall:
    """The call an OpenAI request makes (raises ``BadRequest`` as the gateway does)."""
    body, data = parse_body(raw, kind)
    who = identify(headers, data)
    workflow = f"{tenant}/{who.workflow}"
    text = body.text()
    if isinstance(body, ChatRequest):
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
    else:
        messages = [{"role": "user", "content": text}]
    data.pop("stream", None)
    data.pop("stream_options", None)
    return RayCall(
        workflow=workflow, tenant=tenant, agent=who.agent, tool=who.tool,
        ends=who.ends, kind=kind, model=body.model,
        messages=messages, prompt_tokens=estimate_tokens(text),
        runs=text_runs(text, block_tokens), max_tokens=body.output_limit(default_max_tokens),
        body=data,
    )
