"""Claude Code's auto-compaction, replayed at the serving model's context window.

The Claude Code trace was recorded against Claude models with 200k- and 1M-token
windows; its prompts reach 894k tokens. Replayed on a model with a 131,072-token
window, the client would not have sent those prompts: Claude Code compacts a
conversation before it outgrows the window. This module applies that rule to each
agent stream of a session (the main agent and each sub-agent have their own context):

* **when**: before a call whose prompt reaches the threshold
  ``window - 20,000 - 13,000`` (the output reserved for the summary and the
  auto-compact buffer of Claude Code, see docs/workloads.md). For windows under
  66,000 tokens, where that leaves less than half the window, half the window;
* **the compaction call**: the conversation so far (the prompt that would have been
  sent, cut to ``window - summary``) is sent once more with the summary request; its
  output is the summary (``summary`` tokens, whole blocks);
* **what remains**: the shared prefix (tool schemas, system prompt), the summary, and
  what the conversation added since the previous call of the stream (if that is itself
  past the threshold, as for a resumed session whose first prompt already is, the
  summary stands for as much more as it takes). The summary's
  blocks are new (it sits at another position than where it was generated), so the
  compacted call's prefix is a cache miss: the honest cost of compaction;
* later calls of the stream keep that shape (their prefix: shared, summary, then their
  own new blocks) until the stream compacts again, or until a call no longer starts with
  the blocks that were summarized (the recorded session compacted or rewrote its context
  itself): from there the calls are taken as recorded.

Everything is arithmetic on block runs: the same session gives the same calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from saga.core.blocks import common_blocks
from saga.core.workflow import Call, Prompt
from saga.workloads._blocks import Runs, ceil_div, drop_leading

#: Claude Code reserves this much output for the compaction summary (min(max output, 20k)).
SUMMARY_RESERVE = 20_000
#: Claude Code's auto-compact buffer below the effective window.
AUTOCOMPACT_BUFFER = 13_000


def compact_threshold(window: int) -> int:
    """Prompt tokens at which Claude Code compacts, for a model window of ``window``."""
    return max(window - SUMMARY_RESERVE - AUTOCOMPACT_BUFFER, window // 2)


def shared_blocks(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> int:
    """Leading block positions two run lists of one session share (same ids in the same
    order): :func:`saga.core.blocks.common_blocks` within one namespace."""
    return common_blocks([("", f, c) for f, c in a], [("", f, c) for f, c in b])


def take_leading(runs: Sequence[tuple[int, int]], k: int) -> Runs:
    """The first ``k`` block positions of ``runs``."""
    out: list[tuple[int, int]] = []
    for first, count in runs:
        if k <= 0:
            break
        out.append((first, min(count, k)))
        k -= count
    return tuple(out)


@dataclass(slots=True)
class _Stream:
    """One agent's context: which recorded blocks a summary replaces."""

    replaced: Runs = ()  # the recorded leading blocks the summary stands for
    summary: Runs = ()  # the summary's (new) blocks
    last: Call | None = None  # the stream's previous call, as recorded


@dataclass(frozen=True, slots=True)
class Compacted:
    """A session's calls after compaction, and how many compactions it took."""

    calls: tuple[Call, ...]
    compactions: int


def compact_session(
    calls: Sequence[Call], agents: Sequence[str], block: int, window: int, summary: int
) -> Compacted:
    """Apply auto-compaction to ``calls`` (in issue order; ``agents[i]`` is the agent
    stream of ``calls[i]``) for a model window of ``window`` tokens (module docstring)."""
    threshold = compact_threshold(window)
    summary_blocks = max(1, ceil_div(summary, block))
    fresh = 1 + max((f + n for c in calls for f, n in c.prompt.blocks), default=0)
    streams: dict[str, _Stream] = {}
    out: list[Call] = []
    compactions = 0
    for call, agent in zip(calls, agents, strict=True):
        stream = streams.setdefault(agent, _Stream())
        recorded = call
        if stream.replaced and shared_blocks(call.prompt.blocks, stream.replaced) < len_blocks(
            stream.replaced
        ):
            stream.replaced, stream.summary = (), ()  # the session rewrote its context itself
        current = _apply(call, stream, block)
        if current.prompt.tokens >= threshold:
            keep = _summarized(call, stream.last, threshold, summary_blocks * block, block)
            if keep > summary_blocks:  # only a compaction that shrinks the context
                compactions += 1
                out.append(_summary_call(current, window, summary_blocks * block, block))
                stream.replaced = take_leading(call.prompt.blocks, keep)
                stream.summary = ((fresh, summary_blocks),)
                fresh += summary_blocks
                current = replace(
                    _apply(call, stream, block), after=(out[-1].id,), gap=0.0, tool="compact"
                )
        out.append(current)
        stream.last = recorded
    return Compacted(tuple(out), compactions)


def _summarized(call: Call, previous: Call | None, threshold: int, summary: int,
                block: int) -> int:
    """Recorded leading blocks of ``call`` that a compaction before it summarizes: what it
    shares with the stream's previous call (the conversation so far), or more if the
    rest would still reach the threshold (a resumed session whose first prompt is already
    past it, or one huge tool result), at most all its blocks."""
    shared = shared_blocks(call.prompt.blocks, previous.prompt.blocks) if previous else 0
    needed = ceil_div(call.prompt.tokens + summary - threshold, block)
    return min(len_blocks(call.prompt.blocks), max(shared, needed))


def len_blocks(runs: Sequence[tuple[int, int]]) -> int:
    return sum(n for _, n in runs)


def _apply(call: Call, stream: _Stream, block: int) -> Call:
    """``call`` as the stream's current context has it (summary in place of what it
    replaced)."""
    if not stream.replaced:
        return call
    dropped = len_blocks(stream.replaced)
    added = len_blocks(stream.summary)
    prompt = call.prompt
    tokens = prompt.tokens - dropped * block + added * block
    blocks = stream.summary + drop_leading(prompt.blocks, dropped)
    return replace(call, prompt=Prompt(tokens, prompt.shared, blocks))


def _summary_call(current: Call, window: int, summary_tokens: int, block: int) -> Call:
    """The compaction request: the conversation so far (cut to fit the window beside the
    summary), answered by the summary."""
    prompt = current.prompt
    limit = max(window - summary_tokens, prompt.shared_tokens() + block)
    if prompt.tokens > limit:
        keep = (limit - prompt.shared_tokens()) // block
        prompt = Prompt(limit, prompt.shared, take_leading(prompt.blocks, keep))
    return Call(
        id=current.id + "-compact", prompt=prompt, output_tokens=summary_tokens,
        after=current.after, gap=current.gap, tool=current.tool,
    )
