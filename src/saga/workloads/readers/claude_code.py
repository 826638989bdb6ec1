"""Reader for the Claude Code session trace (``claude_code_sessions.jsonl.gz``).

Each session becomes one workflow; its calls keep their order (sorted by ``t``):

* **chains**: a call comes ``after`` the previous call of the same agent (``main`` or a
  sub-agent ``main/agent_NNN``), with ``gap`` = the recorded ``think_time``. A gap that follows
  a tool result is labelled ``tool="tool"``; one that follows a human message (``input_types``
  without ``tool_result``) is labelled ``tool="human"`` and handled by ``human_gap``: keep it,
  cap it at ``human_cap`` seconds, or make it zero. Where ``think_time`` is null it is
  estimated from the timestamps as ``t - (t_prev + api_time_prev)``.
* **sub-agents** run as parallel branches: the first call of a sub-agent comes after the last
  main call issued at or before its ``spawn_t``, with ``gap = spawn_t - (t + api_time)`` of that
  call (the trace has 1 s resolution, so this is an estimate, clamped at 0; a null ``api_time``
  counts as 0). The first main call issued at or after the sub-agent's estimated end (its last
  call's ``t + api_time``, less 1 s of timestamp slack) also waits for the sub-agent's last
  call, and its gap is then measured from the later of the two ends.
* **prompts**: the trace's block runs give the exact prefix reuse. The tool schemas and the
  system prompt that every session sends first become the named shared prefixes
  ``claude-code:tools/<tool_tokens>`` and ``claude-code:system/<system_tokens>`` (one name per
  size: sessions of one Claude Code version share the same schemas; equal system-prompt sizes
  are taken as equal content, an approximation). Only the part of that prefix which *every*
  call of the agent that starts at the agent's first block id keeps unchanged is made shared
  (some sessions change the end of the system prompt); the blocks it covers are removed from
  the runs. A call whose first run does not start at that id (after a model switch) has no
  shared prefix and keeps its runs.
* output tokens of 0 (27 interrupted calls) are counted as 1.

**context window** (``context_window``, by default the serving model's when known): the
client's auto-compaction is replayed at that window (:mod:`.compaction`), so that no prompt
outgrows it; ``None`` keeps the sessions as recorded (prompts up to 894k tokens).

Session start times are not in the trace: arrivals are a Poisson process of ``rate`` per
second drawn from ``seed``, in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from saga.core.trace import validate_workflow
from saga.core.workflow import Call, EndSignal, Prompt, Workflow
from saga.workloads._blocks import drop_leading, leading_match
from saga.workloads.readers._fields import Fields, json_lines
from saga.workloads.readers.compaction import compact_session

HumanGap = Literal["keep", "cap", "zero"]
TRACE_NAME = "claude_code_sessions.jsonl.gz"
# The 1 s resolution of ``t`` means a call can appear to start up to 1 s before an end estimate.
_SLACK_S = 1.0


@dataclass(frozen=True, slots=True)
class _RawCall:
    index: int
    agent: str
    t: float
    tokens: int
    out: int
    api_time: float
    think_time: float | None
    human: bool
    runs: tuple[tuple[int, int], ...]

    @property
    def end(self) -> float:
        return self.t + self.api_time


def _raw_call(f: Fields, i: int, c: object) -> _RawCall:
    field = f"calls[{i}]"
    if not isinstance(c, dict):
        raise f.error(field, "must be an object")
    input_types = c.get("input_types", "")
    human = isinstance(input_types, str) and "tool_result" not in input_types
    return _RawCall(
        index=i,
        agent=f.text(c, "agent", f"{field}.agent"),
        t=f.number(c, "t", f"{field}.t") or 0.0,
        tokens=f.integer(c, "in", f"{field}.in", 1),
        out=max(1, f.integer(c, "out", f"{field}.out", 0)),
        api_time=f.number(c, "api_time", f"{field}.api_time", optional=True) or 0.0,
        think_time=f.number(c, "think_time", f"{field}.think_time", optional=True),
        human=human,
        runs=tuple(f.runs(c, "blocks", f"{field}.blocks")),
    )


class _Prefix:
    """The shared tools+system prefix of one agent stream and how many blocks it covers."""

    def __init__(self, calls: list[_RawCall], tool_tokens: int, system_tokens: int,
                 block: int) -> None:
        self.base = calls[0].runs[0][0] if calls[0].runs else -1
        starts = [leading_match(c.runs, self.base) for c in calls]
        stable = min((s for s in starts if s > 0), default=0)
        self.blocks = min(stable, (tool_tokens + system_tokens) // block)
        covered = self.blocks * block
        tools = min(tool_tokens, covered)
        self.shared: tuple[tuple[str, int], ...] = tuple(
            (name, n) for name, n in (
                (f"claude-code:tools/{tool_tokens}", tools),
                (f"claude-code:system/{system_tokens}", covered - tools),
            ) if n > 0
        )

    def prompt(self, c: _RawCall) -> Prompt:
        if self.blocks and leading_match(c.runs, self.base) >= self.blocks:
            return Prompt(c.tokens, self.shared, drop_leading(c.runs, self.blocks))
        return Prompt(c.tokens, (), c.runs)


@dataclass(frozen=True)
class ClaudeCodeOptions:
    """How sessions are turned into workflows (see the module docstring)."""

    rate: float = 0.05
    seed: int = 0
    human_gap: HumanGap = "keep"
    human_cap: float = 60.0
    tenant: str = "claude-code"
    slo: float | None = None
    limit: int | None = None
    context_window: int | None = None
    compact_summary: int = 4000
    end_signal: EndSignal = "idle"


def read_claude_code(path: str | Path, options: ClaudeCodeOptions | None = None
                     ) -> Iterator[Workflow]:
    """Stream the sessions of a Claude Code trace as workflows, validating each line."""
    opts = options or ClaudeCodeOptions()
    rng = np.random.default_rng(opts.seed)
    clock = 0.0
    for count, (n, obj) in enumerate(json_lines(path)):
        if opts.limit is not None and count >= opts.limit:
            return
        w = _session(Fields(str(path), n), obj, clock, opts)
        validate_workflow(w, source=str(path), line=n)
        yield w
        clock += float(rng.exponential(1.0 / opts.rate))


def _session(f: Fields, obj: dict[str, Any], arrival: float, opts: ClaudeCodeOptions
             ) -> Workflow:
    sid = f.text(obj, "session", "session")
    block = f.integer(obj, "block_size", "block_size", 1)
    raw = [_raw_call(f, i, c) for i, c in enumerate(f.array(obj, "calls", "calls"))]
    if not raw:
        raise f.error("calls", "a session needs at least one call")
    raw.sort(key=lambda c: (c.t, c.index))
    subs = _subagents(f, obj)
    streams: dict[str, list[_RawCall]] = {}
    for c in raw:
        streams.setdefault(c.agent, []).append(c)
    prefixes = {
        agent: _Prefix(calls, *subs.get(agent, (0.0, 0, 0))[1:], block) if agent != "main"
        else _Prefix(calls, f.integer(obj, "tool_tokens", "tool_tokens"),
                     f.integer(obj, "system_tokens", "system_tokens"), block)
        for agent, calls in streams.items()
    }
    spawn = {a: subs[a][0] if a in subs else cs[0].t for a, cs in streams.items() if a != "main"}
    calls = tuple(_link(raw, streams, spawn, prefixes, opts))
    extra: dict[str, object] = {
        "source": TRACE_NAME, "human_gap": opts.human_gap,
        **({"human_cap": opts.human_cap} if opts.human_gap == "cap" else {}),
    }
    if opts.context_window is not None:
        compacted = compact_session(calls, [c.agent for c in raw], block,
                                    opts.context_window, opts.compact_summary)
        calls = compacted.calls
        extra["context_window"] = opts.context_window
        extra["compactions"] = compacted.compactions
    return Workflow(
        id=sid, tenant=opts.tenant, agent="claude-code", arrival=arrival, calls=calls,
        slo=opts.slo, block_tokens=block, extra=extra, end_signal=opts.end_signal,
    )


def _subagents(f: Fields, obj: dict[str, Any]) -> dict[str, tuple[float, int, int]]:
    """agent name -> (spawn_t, tool_tokens, system_tokens)."""
    out: dict[str, tuple[float, int, int]] = {}
    for i, s in enumerate(f.array(obj, "subagents", "subagents")):
        field = f"subagents[{i}]"
        if not isinstance(s, dict):
            raise f.error(field, "must be an object")
        out[f.text(s, "agent", f"{field}.agent")] = (
            f.number(s, "spawn_t", f"{field}.spawn_t") or 0.0,
            int(s.get("tool_tokens") or 0),
            int(s.get("system_tokens") or 0),
        )
    return out


def _human(gap: float, opts: ClaudeCodeOptions) -> float:
    if opts.human_gap == "zero":
        return 0.0
    if opts.human_gap == "cap":
        return min(gap, opts.human_cap)
    return gap


def _link(raw: list[_RawCall], streams: dict[str, list[_RawCall]], spawn: dict[str, float],
          prefixes: dict[str, _Prefix], opts: ClaudeCodeOptions) -> list[Call]:
    """Turn the time-ordered raw calls into Calls with after/gap/tool."""
    cid = {c.index: f"c{pos}" for pos, c in enumerate(raw)}
    prev: dict[str, _RawCall] = {}
    pending = sorted(
        ((s[-1].end, a) for a, s in streams.items() if a != "main"), key=lambda x: x[0]
    )
    joined: set[str] = set()
    done: set[int] = set()
    out: list[Call] = []
    for c in raw:
        before = prev.get(c.agent)
        after: list[_RawCall] = [before] if before else []
        gap, tool = _chain_gap(c, before, opts)
        if c.agent != "main" and before is None:
            parent = prev.get("main")
            after = [parent] if parent else []
            start = spawn[c.agent]
            gap, tool = (max(0.0, start - parent.end) if parent else start), "subagent"
        elif c.agent == "main" and before is not None:
            ends = [a for end, a in pending if a not in joined and end - _SLACK_S <= c.t
                    and streams[a][-1].index in done]
            for a in ends:
                joined.add(a)
                after.append(streams[a][-1])
            if ends:
                gap = max(0.0, c.t - max(x.end for x in after))
                gap = _human(gap, opts) if c.human else gap
        prev[c.agent] = c
        done.add(c.index)
        out.append(Call(
            id=cid[c.index], prompt=prefixes[c.agent].prompt(c), output_tokens=c.out,
            after=tuple(cid[a.index] for a in after), gap=gap, tool=tool,
        ))
    return out


def _chain_gap(c: _RawCall, before: _RawCall | None, opts: ClaudeCodeOptions
               ) -> tuple[float, str | None]:
    if before is None:
        return 0.0, None
    gap = c.think_time if c.think_time is not None else max(0.0, c.t - before.end)
    if c.human:
        return _human(gap, opts), "human"
    return gap, "tool"
