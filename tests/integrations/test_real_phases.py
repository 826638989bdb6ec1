"""The real benchmark's per-call phases (saga.bench.real_phases) on a made-up run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from saga.bench.real_phases import phases, render

ROOT = Path(__file__).resolve().parents[2]

# at, workflow, call, replica, door, retain_wait, queue, prepare, upstream
RUN = {
    "case": "memory", "policy": "saga", "repetition": 0,
    "phases": [
        [0.0, "default/a", 0, 0, 2.0, 0.0, 0.5, 0.0, 1.5],
        [4.0, "default/a", 1, 0, 0.0, 0.4, 0.0, 0.2, 1.0],
        [0.5, "default/b", 0, 1, 0.0, 0.0, 1.5, 0.1, 2.5],
    ],
    # workflow (the client's id), call, prefill s, decode s; b's first call untimed
    "engine_timings": [["a", 0, 1.0, 0.25], ["a", 1, 0.5, 0.25]],
    "retain_steps": [[3.5, "default/a", "offload", 0.4], [5.0, "default/a", "drop", 0.2]],
}


def test_a_run_splits_each_call_into_its_phases() -> None:
    untimed = {**RUN, "policy": "llm-d", "engine_timings": [], "retain_steps": []}
    other_case = {**RUN, "case": "light", "policy": "continuum"}
    saga, llmd = phases([RUN, untimed, other_case])
    assert (saga.policy, saga.calls) == ("saga", 3)
    assert saga.door == pytest.approx(2.0 / 3) and saga.retain_wait == pytest.approx(0.4 / 3)
    assert saga.queue == pytest.approx(2.0 / 3) and saga.prepare == pytest.approx(0.1)
    assert saga.upstream == pytest.approx(5.0 / 3)
    # over the two calls the engine timed: upstream 2.5 s, prefill 1.5, decode 0.5
    assert (saga.prefill, saga.decode) == (0.75, 0.25)
    assert saga.engine_wait == pytest.approx(0.25)
    assert (saga.retain_steps, saga.retain_step) == (2, pytest.approx(0.3))
    assert "| saga | 3 | 0.667 | 0.133 | 0.667 | 0.100 | 1.667 | 0.750 | 0.250 | 0.250 | " \
        "2 (0.300) |" in render([saga])
    assert math.isnan(llmd.prefill) and (llmd.retain_steps, llmd.retain_step) == (0, 0.0)


def test_a_workflows_first_calls_and_its_later_ones_apart() -> None:
    (first,) = phases([RUN], calls="first")
    (later,) = phases([RUN], calls="later")
    assert (first.calls, first.door, first.queue, first.upstream) == (2, 1.0, 1.0, 2.0)
    # a's first call alone was timed: upstream 1.5, prefill 1.0, decode 0.25
    assert (first.prefill, first.decode, first.engine_wait) == (1.0, 0.25, 0.25)
    assert (later.calls, later.retain_wait, later.prepare, later.upstream) == (1, 0.4, 0.2, 1.0)
    assert (later.prefill, later.decode, later.engine_wait) == (0.5, 0.25, 0.25)
    assert (later.retain_steps, first.retain_steps) == (2, 2)


def test_runs_without_phases_are_skipped() -> None:
    assert phases([{k: v for k, v in RUN.items() if k != "phases"}]) == []


def test_the_script_prints_the_table_or_a_usage_line(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "real_phases.py"
    env = {"PYTHONPATH": str(ROOT / "src")}
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, env=env, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("usage: real_phases.py")
    (tmp_path / "runs.jsonl").write_text(json.dumps(RUN) + "\n")
    ok = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                        text=True, env=env, check=True)
    assert ok.stdout.splitlines()[2].startswith("| saga | 3 | 0.667 |")
    later = subprocess.run([sys.executable, str(script), str(tmp_path), "memory", "later"],
                           capture_output=True, text=True, env=env, check=True)
    assert later.stdout.splitlines()[2].startswith("| saga | 1 | 0.000 | 0.400 |")
    odd = subprocess.run([sys.executable, str(script), str(tmp_path), "memory", "second"],
                         capture_output=True, text=True, env=env, check=False)
    assert odd.returncode == 2
