"""benchmarks/real_queue_order.py counts, from a record's phases, the first calls that got a
replica's slot while a later call waited there (below and past warm first's 5 s bound) and
the later calls that got it while a first call waited: exact counts on a constructed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _phase(at: float, workflow: str, index: int, replica: int, queued: float) -> list[object]:
    # CallPhases: at, workflow, call, replica, door, retain_wait, queue, prepare, upstream
    return [at, workflow, index, replica, 0.0, 0.0, queued, 0.0, 1.0]


def test_the_counts_of_a_constructed_run(tmp_path: Path) -> None:
    phases = [
        _phase(0.0, "a", 0, 0, 0.0),  # started on arrival: not counted
        _phase(1.0, "b", 1, 0, 2.0),  # waits 1-3; started while c's first call waits
        _phase(1.5, "c", 0, 0, 3.5),  # waits 1.5-5: started while d's later call waits
        _phase(2.0, "d", 2, 0, 4.0),  # waits 2-6
        _phase(2.0, "e", 0, 0, 6.0),  # waits 2-8 (past 5 s), started while f's waits
        _phase(7.0, "f", 1, 0, 2.0),  # waits 7-9
        _phase(2.5, "g", 1, 1, 1.0),  # another replica: nothing waits beside it there
    ]
    record = tmp_path / "rec"
    record.mkdir()
    runs = [{"case": "memory", "policy": "saga", "repetition": 0, "phases": phases},
            {"case": "light", "policy": "saga", "repetition": 0, "phases": phases}]
    (record / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "real_queue_order.py"), str(record)],
        env={"PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0] == ("| record | policy | runs | first before a later, waited < 5 s | "
                      "first before a later, waited >= 5 s | later before a first |")
    # b (later) before c's first; c (first, 3.5 s) before d's later; d (later) before e's
    # first; e (first, 6 s) before f's later
    assert out[2:] == ["| rec | saga | 1 | 1 | 1 | 2 |"]
