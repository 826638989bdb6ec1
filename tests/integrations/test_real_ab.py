"""benchmarks/real_ab.py on made-up runs: the figures it prints per code and per run pair."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _run(policy: str, tct: dict[str, float], load: float, hits: float = 0.0,
         deferred: dict[str, float] | None = None) -> dict[str, Any]:
    return {"case": "memory", "policy": policy, "repetition": 0, "tct": tct, "load": [load, 0.0],
            "prefix_hits": hits, "prefix_queries": 100.0, "deferred": deferred or {}}


def _folder(root: Path, name: str, runs: list[dict[str, Any]]) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return folder


def test_hit_rates_held_sessions_loads_and_the_change_per_run_pair(tmp_path: Path) -> None:
    # saga's within-run ratio over llm-d: BASE 2 and 1, with the change 4 and 2 (2x each pair)
    base = [
        _folder(tmp_path, "b0", [_run("saga", {"a": 10.0, "b": 10.0}, 5.0, 50.0, {"a": 3.0}),
                                 _run("llm-d", {"a": 20.0, "b": 20.0}, 6.0, 20.0)]),
        _folder(tmp_path, "b1", [_run("saga", {"a": 10.0, "b": 30.0}, 7.0, 60.0,
                                      {"a": 1.0, "b": 5.0}),
                                 _run("llm-d", {"a": 20.0, "b": 20.0}, 8.0, 30.0)]),
    ]
    new = [
        _folder(tmp_path, "n0", [_run("saga", {"a": 5.0, "b": 5.0}, 9.0, 70.0),
                                 _run("llm-d", {"a": 20.0, "b": 20.0}, 10.0, 20.0)]),
        _folder(tmp_path, "n1", [_run("saga", {"a": 10.0, "b": 10.0}, 11.0, 80.0),
                                 _run("llm-d", {"a": 20.0, "b": 20.0}, 12.0, 20.0)]),
    ]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "real_ab.py"), "--base", *map(str, base),
         "--new", *map(str, new), "--vs", "llm-d"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.splitlines()
    assert ("  saga: mean TCT 15.00 s (runs 10.0, 20.0; load at their starts 5.0, 7.0); "
            "hits 55.0% (runs 50.0%, 60.0%), held 3 sessions, 3.0 s each") in out
    assert ("  llm-d: mean TCT 20.00 s (runs 20.0, 20.0; load at their starts 10.0, 12.0); "
            "hits 20.0% (runs 20.0%, 20.0%), held 0 sessions") in out
    assert out[-2] == ("paired by run pair, on the runs' mean TCTs (the interval resamples "
                       "the pairs):")
    assert out[-1] == ("  saga's within-run ratio over llm-d, with the change over at BASE: "
                       "2.00 (2.00-2.00, 2 pairs); per pair 2.00, 2.00")
