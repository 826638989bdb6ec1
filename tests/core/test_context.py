"""Context limits: a call longer than the model's window is an error, never simulated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.cli import main
from saga.core.context import check_context, count_over_context, over_context
from saga.core.trace import write_trace
from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.engine.hardware import MODELS
from saga.errors import UserError
from saga.metrics.summary import summarize
from saga.sched.registry import build_policy
from saga.sim.simulator import Simulation

BT = 64
LIMIT = 131_072  # test-2's model, Llama-3.1-8B


def wf(wid: str, arrival: float, *lengths: tuple[int, int]) -> Workflow:
    """A chain of calls with (prompt tokens, output tokens) each."""
    calls = []
    for i, (prompt, output) in enumerate(lengths):
        blocks = min(prompt // BT, 8)
        calls.append(Call(f"c{i}", Prompt(prompt, (), ((0, blocks),)), output,
                          (f"c{i - 1}",) if i else (), 1.0 if i else 0.0))
    return Workflow(wid, "t", "a", arrival, tuple(calls), end_signal="explicit")


def test_model_presets_carry_their_published_context() -> None:
    assert MODELS["llama-3.1-8b"].max_context == MODELS["llama-3.1-70b"].max_context == 131_072
    assert MODELS["qwen2.5-32b"].max_context == 32_768
    assert all(m.max_context > 0 for m in MODELS.values())


def test_a_call_is_over_when_prompt_plus_output_exceed_the_window() -> None:
    w = wf("w", 0.0, (LIMIT - 10, 10), (LIMIT - 10, 11), (LIMIT + 5, 1))
    assert [c.id for c in over_context(w, LIMIT)] == ["c1", "c2"]
    assert over_context(w, 0) == []  # no known window: no limit


def test_strict_mode_is_a_one_line_error_naming_the_call_and_the_limit() -> None:
    ok = wf("ok", 0.0, (1000, 10))
    bad = wf("s-17", 1.0, (1000, 10), (140_000, 500))
    with pytest.raises(UserError) as err:
        check_context([ok, bad], LIMIT, "llama-3.1-8b")
    assert str(err.value) == (
        "workflow s-17 call c1: 140,500 tokens (140,000 prompt + 500 output) exceed the "
        "131,072-token context of llama-3.1-8b"
    )
    assert "\n" not in str(err.value)


def test_calls_over_context_are_counted_and_their_workflows_rejected_unsimulated() -> None:
    workflows = [
        wf("a", 0.0, (2000, 50), (3000, 50)),
        wf("b", 1.0, (2000, 50), (LIMIT, 1), (LIMIT + 100, 1)),  # two calls over
        wf("c", 2.0, (LIMIT + 1, 0)),  # one call over (prompt alone)
        wf("d", 3.0, (LIMIT - 1, 1)),  # exactly the window: fits
    ]
    assert count_over_context(workflows, LIMIT) == 3
    # small: Llama-3.1-8B with 4096 blocks of KV, enough for the longest call that fits
    result = Simulation(get_cluster("small"), build_policy("vllm-rr"), workflows).run()
    summary = summarize(result, {})
    assert summary["calls_over_context"] == 3
    assert summary["workflows_rejected"] == 2
    rejected = {w.workflow: w.rejected for w in result.workflows if w.rejected}
    assert set(rejected) == {"b", "c"}
    assert rejected["b"].startswith("over context: workflow b call c1: 131,073 tokens")
    assert sorted({c.workflow for c in result.calls}) == ["a", "d"]


def test_simulate_warns_with_the_count_and_strict_context_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace([wf("a", 0.0, (2000, 50)), wf("b", 1.0, (LIMIT + 100, 1))], trace)
    out = tmp_path / "out"
    assert main(["simulate", "--trace", str(trace), "--cluster", "test-2", "--no-progress",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == [
        "saga: warning: 1 calls longer than the 131,072-token context of llama-3.1-8b were "
        "not simulated (their workflows are rejected; see calls_over_context, "
        "--strict-context)"
    ]
    assert json.loads((out / "summary.json").read_text())["calls_over_context"] == 1
    assert main(["simulate", "--trace", str(trace), "--cluster", "test-2", "--no-progress",
                 "--strict-context", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "saga: error: workflow b call c0: 131,173 tokens (131,172 prompt + 1 output) exceed "
        "the 131,072-token context of llama-3.1-8b (test-2)"
    )
