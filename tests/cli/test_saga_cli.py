"""End-to-end tests through the real `saga` command and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import saga

SAGA = [sys.executable, "-m", "saga.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SAGA, *args], capture_output=True, text=True, timeout=300)


def test_simulate_with_defaults_writes_summary_and_csv(tmp_path: Path) -> None:
    proc = run("simulate", "--out", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "tct_mean", "tct_p50", "tct_p99", "slowdown_mean", "prefix_hit_rate",
        "recomputed_tokens", "kv_utilization", "throughput_workflows_per_s",
        "workflows_completed",
    ):
        assert key in summary
    assert summary["workflows_completed"] == summary["workflows"]
    rows = (tmp_path / "workflows.csv").read_text().splitlines()
    assert rows[0].startswith("workflow,tenant,agent,arrival")
    assert len(rows) == 1 + summary["workflows"]


def test_python_api_matches_the_cli(tmp_path: Path) -> None:
    proc = run("simulate", "--policy", "vllm-rr", "--seed", "3", "--out", str(tmp_path),
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    from_cli = json.loads((tmp_path / "summary.json").read_text())
    from_api = saga.simulate(policy="vllm-rr", seed=3)
    assert json.loads(json.dumps(from_api, sort_keys=True)) == from_cli


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    cases = [
        (["simulate", "--policy", "nope"], "unknown policy 'nope'"),
        (["simulate", "--cluster", "nope"], "unknown cluster 'nope'"),
        (["simulate", "--trace", str(tmp_path / "missing.jsonl")], "trace file not found"),
        (["simulate", "--param", "novalue"], "expected KEY=VALUE"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"workflow": "w", "calls": []}\n')
    cases.append((["simulate", "--trace", str(bad)], "bad.jsonl:1"))
    for args, message in cases:
        proc = run(*args, "--out", str(tmp_path / "o"), "--no-progress")
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_help_explains_every_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("simulate", "list", "workload"):
        assert command in proc.stdout
    proc = run("simulate", "--help")
    assert "examples:" in proc.stdout and "--cluster" in proc.stdout


def test_graph_show_prints_and_draws_what_saga_learned(tmp_path: Path) -> None:
    proc = run("simulate", "--policy", "saga", "--out", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    graphs = json.loads((tmp_path / "graph.json").read_text())
    # tenants learn apart: each graph is named TENANT/AGENT
    assert set(graphs) == {"coding/swe-agent", "browser/web-agent"}
    nodes = graphs["coding/swe-agent"]["nodes"]
    assert nodes["^#0"]["calls"] > 0 and 0 < nodes["^#0"]["p_continue"] <= 1
    proc = run("graph", "show", str(tmp_path), "--agent", "swe-agent")
    assert proc.returncode == 0, proc.stderr
    assert "learned execution graph of 'coding/swe-agent'" in proc.stdout
    assert (tmp_path / "graph-coding--swe-agent.png").stat().st_size > 10_000
    missing = run("graph", "show", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no learned graph here" in missing.stderr
