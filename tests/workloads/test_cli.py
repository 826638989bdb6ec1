"""The `workload` command's handlers, driven through a small argparse parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from rich.console import Console
from workload_helpers import FIXTURES

from saga.core.trace import read_trace
from saga.errors import UserError
from saga.workloads import build_workload
from saga.workloads.cli import register


def _run(argv: list[str]) -> tuple[int, str]:
    ap = argparse.ArgumentParser(prog="saga")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    console = Console(record=True, width=120)
    code = args.func(args, console)
    return code, console.export_text()


def test_generate_then_stats(tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl.gz"
    code, text = _run(["workload", "generate", "fanout", "--param", "count=5", "--seed", "4",
                       "--out", str(out)])
    assert code == 0 and "wrote 5 workflows" in text
    assert tuple(read_trace(out)) == build_workload("fanout", seed=4,
                                                    params={"count": "5"}).workflows
    code, text = _run(["workload", "stats", str(out), "--plots", str(tmp_path / "plots")])
    assert code == 0 and "tenants: fanout 5" in text and "prefix reuse" in text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "calls_per_workflow.png", "gaps.png", "output_tokens.png", "prefix_reuse.png",
        "prompt_tokens.png"]


def test_import_and_list(tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    code, text = _run(["workload", "import", "claude-code",
                       str(FIXTURES / "claude_code_mini.jsonl"), "--out", str(out)])
    assert code == 0 and "imported 2 workflows" in text
    assert [w.id for w in read_trace(out)] == ["s1", "s2"]
    code, text = _run(["workload", "list"])
    assert code == 0 and "interference" in text and "lmcache-taubench" in text


@pytest.mark.parametrize("argv", [
    ["workload", "generate", "chat", "--param", "count", "--out", "X"],
    ["workload", "import", "mooncake", "/nonexistent.jsonl", "--out", "X"],
    ["workload", "stats", "/nonexistent.jsonl"],
])
def test_user_errors(argv: list[str], tmp_path: Path) -> None:
    argv = [a.replace("X", str(tmp_path / "o.jsonl")) for a in argv]
    with pytest.raises(UserError):
        _run(argv)
