"""Trace readers: exact conversions of small fixtures, errors with line and field, real traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workload_helpers import FIXTURES, real_trace

from saga.core.trace import TraceError
from saga.core.workflow import Call, Prompt
from saga.workloads.readers import (
    ClaudeCodeOptions,
    read_azure,
    read_claude_code,
    read_lmcache,
    read_mooncake,
)

TOOLS, SYSTEM = ("claude-code:tools/640", 640), ("claude-code:system/200", 128)
SUB = (("claude-code:tools/128", 128), ("claude-code:system/64", 64))


def test_claude_code_fixture_exact() -> None:
    w1, w2 = read_claude_code(FIXTURES / "claude_code_mini.jsonl")
    assert (w1.id, w1.arrival, w1.tenant, w1.agent, w1.block_tokens) == (
        "s1", 0.0, "claude-code", "claude-code", 64)
    assert w1.calls == (
        Call("c0", Prompt(1000, (TOOLS, SYSTEM), ((13, 3),)), 50),
        Call("c1", Prompt(1200, (TOOLS, SYSTEM), ((13, 6),)), 1, ("c0",), 8.0, "tool"),
        # Sub-agent: after the main call before its spawn, gap = 12 - (10 + 1).
        Call("c2", Prompt(700, SUB, ((503, 7),)), 30, ("c1",), 1.0, "subagent"),
        Call("c3", Prompt(800, SUB, ((503, 9),)), 40, ("c2",), 5.0, "tool"),
        # Join: waits for the sub-agent's last call (ends at 20); null times estimated.
        Call("c4", Prompt(1400, (TOOLS, SYSTEM), ((13, 6), (40, 3))), 60, ("c1", "c3"), 5.0,
             "tool"),
        Call("c5", Prompt(1500, (TOOLS, SYSTEM), ((60, 11),)), 70, ("c4",), 275.0, "human"),
    )
    assert w2.arrival > 0 and w2.calls[0].prompt.shared == (TOOLS, ("claude-code:system/200",
                                                                     192))


@pytest.mark.parametrize(("mode", "gap"), [("keep", 275.0), ("cap", 60.0), ("zero", 0.0)])
def test_claude_code_human_gap(mode: str, gap: float) -> None:
    opts = ClaudeCodeOptions(human_gap=mode, human_cap=60.0)  # type: ignore[arg-type]
    w1 = next(iter(read_claude_code(FIXTURES / "claude_code_mini.jsonl", opts)))
    assert w1.calls[5].gap == gap and w1.extra["human_gap"] == mode


def test_claude_code_arrivals_depend_on_seed_and_rate() -> None:
    path = FIXTURES / "claude_code_mini.jsonl"
    a = [w.arrival for w in read_claude_code(path, ClaudeCodeOptions(seed=1, rate=1.0))]
    b = [w.arrival for w in read_claude_code(path, ClaudeCodeOptions(seed=1, rate=1.0))]
    c = [w.arrival for w in read_claude_code(path, ClaudeCodeOptions(seed=2, rate=1.0))]
    assert a == b and a != c and a[0] == 0.0


CLAUDE_BAD = [
    ({"calls": [{"agent": "main"}]}, "calls[0].t", "is missing"),
    ({"calls": "x"}, "calls", "must be a list"),
    ({"block_size": 0}, "block_size", "must be >= 1"),
    ({"calls": [{"agent": "main", "t": 0, "in": 5, "out": 1, "blocks": [[0, 0]]}]},
     "calls[0].blocks[0]", "must be [first_id >= 0, count >= 1]"),
    ({"calls": [{"agent": "main", "t": 0, "in": 5, "out": 1, "blocks": [[0, 1]]}]},
     "calls[0].prompt.tokens", "is less than"),
]


@pytest.mark.parametrize(("patch", "field", "reason"), CLAUDE_BAD)
def test_claude_code_bad_lines(tmp_path: Path, patch: dict[str, object], field: str,
                               reason: str) -> None:
    lines = (FIXTURES / "claude_code_mini.jsonl").read_text().splitlines()
    obj = json.loads(lines[1]) | patch
    f = tmp_path / "c.jsonl"
    f.write_text(lines[0] + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(TraceError) as e:
        list(read_claude_code(f))
    assert (e.value.line, e.value.field) == (2, field)
    assert reason in e.value.reason


def test_mooncake_fixture_sessions() -> None:
    ws = list(read_mooncake(FIXTURES / "mooncake_mini.jsonl"))
    assert [w.extra["lines"] for w in ws] == [[1, 3], [2], [4]]
    a = ws[0]
    assert a.block_tokens == 512 and a.arrival == 0.0
    # Block 0 is used by two sessions: a named shared prefix; the rest renumbered locally.
    assert a.calls == (
        Call("c0", Prompt(1100, (("mooncake:0", 512),), ((0, 1),)), 10),
        Call("c1", Prompt(1600, (("mooncake:0", 512),), ((0, 2),)), 1, ("c0",), 3.0, "human"),
    )
    assert ws[2].arrival == 4.0 and ws[2].calls[0].prompt == Prompt(600, (), ((0, 1),))


def test_mooncake_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\n'
                 '{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [-3]}\n')
    with pytest.raises(TraceError) as e:
        list(read_mooncake(f))
    assert (e.value.line, e.value.field) == (2, "hash_ids[0]")


def test_azure_fixture_and_errors(tmp_path: Path) -> None:
    ws = list(read_azure(FIXTURES / "azure_mini.csv", kind="code"))
    assert [w.id for w in ws] == ["az-code-000001", "az-code-000002", "az-code-000003"]
    assert [round(w.arrival, 6) for w in ws] == [0.0, 0.052, 1.52004]
    assert ws[1].calls == (Call("c0", Prompt(130, (), ((0, 2),)), 1),)
    assert {w.tenant for w in ws} == {"background"}
    f = tmp_path / "a.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,x,3\n")
    with pytest.raises(TraceError) as e:
        list(read_azure(f))
    assert (e.value.line, e.value.field) == (2, "ContextTokens")
    f.write_text("a,b\n")
    with pytest.raises(TraceError, match="expected header"):
        list(read_azure(f))


def test_lmcache_fixture_prefix_sharing() -> None:
    pytest.importorskip("tokenizers")
    ws = list(read_lmcache(FIXTURES / "lmcache_mini.jsonl", name="mini"))
    assert [w.extra["session_id"] for w in ws] == ["a", "b"]
    assert ws[1].arrival == 0.5
    a = ws[0]
    assert [c.gap for c in a.calls] == [0.0, 2.0, 2.0]
    # Each prompt extends the previous one: one run from id 0, growing.
    runs = [c.prompt.blocks for c in a.calls]
    assert all(len(r) == 1 and r[0][0] == 0 for r in runs)
    assert runs[0][0][1] < runs[1][0][1] < runs[2][0][1]
    # Same text, same tokens: the two sessions get identical shapes.
    assert [c.prompt for c in ws[1].calls] == [c.prompt for c in a.calls]


def test_lmcache_deterministic() -> None:
    pytest.importorskip("tokenizers")
    one = list(read_lmcache(FIXTURES / "lmcache_mini.jsonl"))
    two = list(read_lmcache(FIXTURES / "lmcache_mini.jsonl"))
    assert one == two


@pytest.mark.real_traces
def test_real_claude_code() -> None:
    path = real_trace("claude_code_sessions.jsonl.gz")
    ws = list(read_claude_code(path))
    assert len(ws) == 710
    assert sum(len(w.calls) for w in ws) == 49_334
    joins = sum(1 for w in ws for c in w.calls if len(c.after) > 1)
    assert joins == 50  # calls waiting for one or more finished sub-agents


@pytest.mark.real_traces
def test_real_mooncake() -> None:
    ws = list(read_mooncake(real_trace("mooncake_conversation.jsonl.gz")))
    assert sum(len(w.calls) for w in ws) == 12_031
    assert len(ws) == 8_099


@pytest.mark.real_traces
@pytest.mark.parametrize(("kind", "n"), [("code", 8_819), ("conv", 19_366)])
def test_real_azure(kind: str, n: int) -> None:
    ws = list(read_azure(real_trace(f"azure_llm_2023_{kind}.csv.gz"), kind=kind))
    assert len(ws) == n and ws[0].arrival == 0.0
    assert 3000 < ws[-1].arrival < 3700


@pytest.mark.real_traces
@pytest.mark.parametrize(("name", "sessions", "calls"),
                         [("miniswe", 20, 402), ("magagent", 25, 746), ("taubench", 24, 471)])
def test_real_lmcache(name: str, sessions: int, calls: int) -> None:
    pytest.importorskip("tokenizers")
    ws = list(read_lmcache(real_trace(f"lmcache_agent/{name}.jsonl.gz"), name=name))
    assert (len(ws), sum(len(w.calls) for w in ws)) == (sessions, calls)
