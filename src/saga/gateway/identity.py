"""Who a call belongs to, from what standard clients already send.

A call's *workflow* (the task whose calls SAGA schedules as one), its *agent* (the
program whose graph is learned) and the *tool* that ran before it. Clients that know
SAGA send ``x-saga-*`` headers; real agent clients do not, but they carry session
identity of their own. :func:`identify` reads, in this order of precedence (the first
present wins; each id is tagged with where it came from, so two conventions never
collide):

workflow
  1. header ``x-saga-workflow`` (untagged: the client named it);
  2. body ``prompt_cache_key`` (OpenAI: "used to cache responses for similar requests";
     Codex sets it to its conversation id) -> ``cache:``;
  3. body ``user`` (OpenAI's end-user id) -> ``user:``;
  4. body ``metadata`` (OpenAI's request metadata; Anthropic-style clients put
     ``user_id`` there): its ``session_id``, ``conversation_id``, ``thread_id`` or
     ``user_id`` -> ``meta:``;
  5. the session headers of coding agents, in llm-d's order (llm-d-router,
     ``pkg/epp/framework/plugins/requestcontrol/requestheader/agentidentity/``):
     ``x-claude-code-session-id`` (Claude Code, "Request headers Claude Code includes",
     https://code.claude.com/docs/en/llm-gateway), ``x-session-affinity`` (OpenCode),
     ``session-id`` and ``session_id`` (Codex, current and legacy) -> ``session:``;
  6. the routers' session conventions: header ``x-session-id`` (vLLM production-stack
     router's session routing, Ray Serve LLM's session-aware routing examples) and body
     ``session_id`` -> ``session:``;
  7. the conversation's start: ``auto:`` + a hash of the leading system (and
     developer) messages and the first user message (completions: the first 1024
     prompt characters). Every turn of a conversation repeats its start, so its calls
     map to one workflow; two conversations with the same system prompt *and* first
     user message merge (send a header to tell them apart).

agent
  header ``x-saga-agent``; else the coding agent the request comes from, known by its
  session header or its ``User-Agent`` / ``originator`` (``claude-code``, ``codex``,
  ``opencode``); else body ``metadata.agent``; else ``default``.

tool
  header ``x-saga-tool``; else, when the conversation ends in ``tool`` messages that
  answer an assistant message's ``tool_calls``, the names of those tools (in call
  order, ``+``-joined when several ran); a conversation that ends in a user message is
  a new turn (no tool).

end
  header ``x-saga-end`` only (no client convention says a task is done; the gateway
  ends a workflow after ``workflow_idle_timeout``).

Pure: no I/O, no clock, no gateway state, so that other routers (a Ray Serve
deployment) can import :func:`identify` as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.wire.openai_api import BadRequest
from saga.wire.prefix import chat_text

_MAX_NAME = 256
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no", ""}

#: Coding agents' session headers, in llm-d's agent-identity order, with the agent each names.
SESSION_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-claude-code-session-id", "claude-code"),
    ("x-session-affinity", "opencode"),
    ("session-id", "codex"),
    ("session_id", "codex"),
)
#: Routers' session header (vLLM production-stack router, Ray Serve) and body field.
ROUTER_SESSION_HEADER = "x-session-id"
ROUTER_SESSION_FIELD = "session_id"
METADATA_KEYS = ("session_id", "conversation_id", "thread_id", "user_id")
#: ``User-Agent`` / ``originator`` prefixes of coding agents (Claude Code sends
#: ``claude-cli/VERSION``, Codex ``codex_cli_rs/VERSION`` and ``originator:
#: codex_cli_rs``, OpenCode ``opencode/VERSION``).
USER_AGENTS: tuple[tuple[str, str], ...] = (
    ("claude-cli/", "claude-code"),
    ("claude-code/", "claude-code"),
    ("codex_cli_rs", "codex"),
    ("codex_exec", "codex"),
    ("opencode/", "opencode"),
)


@dataclass(frozen=True, slots=True)
class Identity:
    """A call's place: its workflow (unscoped: the gateway prefixes the tenant), agent,
    the tool before it, whether it ends the workflow, and which rule named each."""

    workflow: str
    workflow_source: str
    agent: str
    agent_source: str
    tool: str | None
    ends: bool


def identify(headers: Mapping[str, str], body: Mapping[str, Any]) -> Identity:
    """The identity of one call from its HTTP headers (any case) and its JSON body.

    A malformed ``x-saga-*`` header is a :class:`BadRequest` (400); what other
    clients send is never refused: an over-long or unprintable value is hashed."""
    h = {k.lower(): v for k, v in headers.items()}
    workflow, wf_source = _workflow(h, body)
    agent, agent_source = _agent(h, body)
    tool = _saga_name(h, "x-saga-tool") or tool_before(body)
    return Identity(workflow, wf_source, agent, agent_source, tool,
                    _flag(h.get("x-saga-end"), "x-saga-end"))


def _workflow(h: Mapping[str, str], body: Mapping[str, Any]) -> tuple[str, str]:
    named = _saga_name(h, "x-saga-workflow")
    if named:
        return named, "x-saga-workflow"
    for field, tag in (("prompt_cache_key", "cache"), ("user", "user")):
        value = body.get(field)
        if isinstance(value, str) and value.strip():
            return f"{tag}:{_safe(value)}", field
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        for key in METADATA_KEYS:
            value = metadata.get(key)
            if isinstance(value, str) and value.strip():
                return f"meta:{_safe(value)}", f"metadata.{key}"
    for header, _ in SESSION_HEADERS:
        value = h.get(header)
        if value and value.strip():
            return f"session:{_safe(value)}", header
    value = h.get(ROUTER_SESSION_HEADER)
    if value and value.strip():
        return f"session:{_safe(value)}", ROUTER_SESSION_HEADER
    field_value = body.get(ROUTER_SESSION_FIELD)
    if isinstance(field_value, str) and field_value.strip():
        return f"session:{_safe(field_value)}", ROUTER_SESSION_FIELD
    return "auto:" + _digest(conversation_start(body)), "prefix"


def _agent(h: Mapping[str, str], body: Mapping[str, Any]) -> tuple[str, str]:
    named = _saga_name(h, "x-saga-agent")
    if named:
        return named, "x-saga-agent"
    for header, agent in SESSION_HEADERS:
        if h.get(header):
            return agent, header
    for header in ("originator", "user-agent"):
        value = h.get(header, "").strip().lower()
        for prefix, agent in USER_AGENTS:
            if value.startswith(prefix):
                return agent, header
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        named_agent = metadata.get("agent")
        if isinstance(named_agent, str) and named_agent.strip():
            return _safe(named_agent), "metadata.agent"
    return "default", "default"


def conversation_start(body: Mapping[str, Any]) -> str:
    """What every turn of one conversation repeats: the leading system / developer
    messages and the first user message (completions: the prompt's first 1024
    characters)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        start: list[dict[str, Any]] = []
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            start.append({"role": m.get("role"), "content": m.get("content")})
            if m.get("role") not in ("system", "developer"):
                break
        return chat_text(start)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):  # token ids: their start, as text
        prompt = json.dumps(prompt, separators=(",", ":"))
    return prompt[:1024]


def tool_before(body: Mapping[str, Any]) -> str | None:
    """The tool(s) whose results end the conversation: the trailing ``tool`` (or legacy
    ``function``) messages, named through the ``tool_calls`` of the assistant message
    they answer; None when the last message is not a tool result."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    trailing: list[Mapping[str, Any]] = []
    i = len(messages) - 1
    while i >= 0 and isinstance(messages[i], Mapping) \
            and messages[i].get("role") in ("tool", "function"):
        trailing.append(messages[i])
        i -= 1
    if not trailing:
        return None
    calls: dict[str, str] = {}
    order: list[str] = []
    if i >= 0 and isinstance(messages[i], Mapping) and messages[i].get("role") == "assistant":
        for call in messages[i].get("tool_calls") or []:
            if not isinstance(call, Mapping):
                continue
            fn = call.get("function")
            called = fn.get("name") if isinstance(fn, Mapping) else None
            if isinstance(called, str) and called:
                calls[str(call.get("id"))] = called
                order.append(called)
    names: list[str] = []
    for message in reversed(trailing):  # in call order
        name = calls.get(str(message.get("tool_call_id")))
        if name is None:
            raw = message.get("name")
            name = raw if isinstance(raw, str) and raw else None
        if name is None and len(order) == 1:
            name = order[0]
        if name is not None and name not in names:
            names.append(name)
    if not names:
        return "tool"
    return _safe("+".join(names))


def _saga_name(h: Mapping[str, str], name: str) -> str | None:
    """A name header of ours: at most 256 printable characters (else a 400)."""
    raw = h.get(name)
    if raw is None:
        return None
    if len(raw) > _MAX_NAME or not raw.isprintable():
        raise BadRequest(400, f"header {name}: expected at most {_MAX_NAME} printable "
                         f"characters, got {len(raw)}", code="bad_header")
    return raw.strip() or None


def _safe(value: str) -> str:
    """A client's id as a name: itself when short and printable, else its hash."""
    value = value.strip()
    if len(value) <= _MAX_NAME and value.isprintable():
        return value
    return "h" + _digest(value)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _flag(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(400, f"header {name}: expected true or false, got {raw!r}")
