"""The real benchmark's TCT decomposition (saga.bench.real_decompose) on a made-up run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saga.bench.real_decompose import decompose, render

ROOT = Path(__file__).resolve().parents[2]

# workflow, index, sent, latency, replica, status, prompt tokens, cached prompt tokens
RUN = {
    "case": "memory", "policy": "saga", "repetition": 0,
    "tct": {"a": 10.0, "b": 4.0}, "deferred": {"a": 6.0},
    "call_log": [
        ["a", 1, 7.5, 1.0, 0, 200, 1000, 800],  # out of order: sorted by index
        ["a", 0, 0.0, 7.0, 0, 200, 800, 0],  # held 6 s of its 7
        ["b", 0, 0.0, 1.5, 1, 200, 400, 0],
        ["b", 1, 2.0, 1.5, 1, 200, 600, 100],
    ],
}


def test_a_run_splits_into_held_served_and_the_rest() -> None:
    other_case = {**RUN, "case": "light", "policy": "llm-d"}
    (row,) = decompose([RUN, other_case])
    assert row.policy == "saga" and row.workflows == 2
    assert row.tct == 7.0 and row.held == 3.0
    assert row.served == pytest.approx((2.0 + 3.0) / 2)  # a: 8 - 6, b: 3
    assert row.other == pytest.approx(7.0 - 3.0 - 2.5)
    assert row.uncached_tokens == (2800 - 900) / 2
    assert row.hit_rate == pytest.approx(900 / 2800)
    assert row.later_hit_rate == pytest.approx(900 / 1600)
    assert row.later_misses == 0.5  # b's second call found 100 of 600
    assert "| saga | 7.00 | 3.00 | 2.50 | 1.50 | 950 | 32.1% | 56.2% | 50% |" in render([row])


def test_the_script_prints_the_table_or_a_usage_line(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "real_decompose.py"
    env = {"PYTHONPATH": str(ROOT / "src")}
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, env=env, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: real_decompose.py")
    (tmp_path / "runs.jsonl").write_text(json.dumps(RUN) + "\n")
    ok = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                        text=True, env=env, check=True)
    assert ok.stdout.splitlines()[2].startswith("| saga | 7.00 | 3.00 |")
