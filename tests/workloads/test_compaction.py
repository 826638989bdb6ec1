"""Claude Code's auto-compaction replayed at the model's window (readers/compaction.py)."""

from __future__ import annotations

from itertools import islice

import pytest

from saga.core.context import call_length
from saga.core.trace import validate_workflow
from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads.paths import default_trace
from saga.workloads.readers.claude_code import ClaudeCodeOptions, read_claude_code
from saga.workloads.readers.compaction import compact_session, compact_threshold

BT = 64
SHARED = (("sys", 1000),)


def chain(*sizes: tuple[int, int] | int) -> list[Call]:
    """Calls of one stream: n blocks [[0, n]] (or (first, n)) after a 1000-token prefix."""
    calls = []
    for i, size in enumerate(sizes):
        first, n = size if isinstance(size, tuple) else (0, size)
        calls.append(Call(f"c{i}", Prompt(1000 + n * BT, SHARED, ((first, n),)), 100,
                          (f"c{i - 1}",) if i else (), 2.0 if i else 0.0, "bash" if i else None))
    return calls


def test_threshold_is_claude_codes_window_less_summary_reserve_and_buffer() -> None:
    assert compact_threshold(200_000) == 167_000  # 83.5 % of Claude's 200k window
    assert compact_threshold(131_072) == 98_072
    assert compact_threshold(40_000) == 20_000  # small windows: half


def test_compaction_replaces_the_conversation_by_a_new_summary() -> None:
    calls = chain(100, 200, 290, 400, 450, 500, 560, (1000, 50))
    out = compact_session(calls, ["main"] * len(calls), BT, 40_000, 4000)
    assert out.compactions == 2
    by_id = {c.id: c for c in out.calls}
    assert [c.id for c in out.calls] == [
        "c0", "c1", "c2", "c3-compact", "c3", "c4", "c5", "c6-compact", "c6", "c7"]
    # before c3 (26,600 tokens >= 20,000): the conversation so far is summarized
    summary = by_id["c3-compact"]
    assert summary.prompt == calls[3].prompt and summary.output_tokens == 63 * BT
    assert (summary.after, summary.gap, summary.tool) == (("c2",), 2.0, "bash")
    c3 = by_id["c3"]
    assert c3.prompt == Prompt(26_600 - 290 * BT + 63 * BT, SHARED, ((1051, 63), (290, 110)))
    assert (c3.after, c3.gap, c3.tool) == (("c3-compact",), 0.0, "compact")
    assert by_id["c5"].prompt == Prompt(33_000 - 290 * BT + 63 * BT, SHARED,
                                        ((1051, 63), (290, 210)))
    # c6 passes the threshold again: a second summary, new blocks again
    assert by_id["c6-compact"].prompt.blocks == ((1051, 63), (290, 270))
    assert by_id["c6"].prompt == Prompt(36_840 - 500 * BT + 63 * BT, SHARED,
                                        ((1114, 63), (500, 60)))
    # the session rewrote its context itself: taken as recorded from there
    assert by_id["c7"] == calls[7]


def test_a_first_prompt_past_the_threshold_is_compacted_too() -> None:
    calls = chain(600, 610)  # a resumed session: 39,400 tokens at once
    out = compact_session(calls, ["main", "main"], BT, 40_000, 4000)
    first = out.calls[1]
    assert out.calls[0].id == "c0-compact" and first.id == "c0"
    assert first.prompt.tokens <= compact_threshold(40_000)
    assert all(call_length(c) <= 40_000 for c in out.calls)


def test_streams_compact_apart() -> None:
    main, sub = chain(100, 400), chain((10_000, 100), (10_000, 400))
    sub_calls = [Call("s" + c.id, c.prompt, c.output_tokens) for c in (sub[0], sub[1])]
    calls = [main[0], sub_calls[0], main[1], sub_calls[1]]
    out = compact_session(calls, ["main", "sub", "main", "sub"], BT, 40_000, 4000)
    assert [c.id for c in out.calls] == ["c0", "sc0", "c1-compact", "c1", "sc1-compact", "sc1"]


@pytest.mark.parametrize("window", [131_072, 32_768])
def test_real_sessions_stay_within_the_window_and_compact_deterministically(
    window: int,
) -> None:
    path = default_trace("claude_code_sessions.jsonl.gz")
    if not path.exists():
        pytest.skip(f"{path} not present")
    opts = ClaudeCodeOptions(context_window=window, limit=80)
    first = list(read_claude_code(path, opts))
    again = list(read_claude_code(path, opts))
    assert first == again
    raw = list(islice(read_claude_code(path, ClaudeCodeOptions(limit=80)), 80))
    assert max(call_length(c) for w in raw for c in w.calls) > window  # there was work to do
    assert max(call_length(c) for w in first for c in w.calls) <= window
    assert sum(int(str(w.extra["compactions"])) for w in first) > 0
    for w in first:
        validate_workflow(w)
        assert isinstance(w, Workflow) and w.end_signal == "idle"
