"""The real benchmark's simulator part alone, against a recorded real run (issue 16).

    PYTHONPATH=src python benchmarks/sim_real_agreement.py DIR [DIR ...]
    PYTHONPATH=src python benchmarks/sim_real_agreement.py --points DIR [DIR ...] > points.json
    PYTHONPATH=src python benchmarks/sim_real_agreement.py --refit DIR [DIR ...]
    PYTHONPATH=src python benchmarks/sim_real_agreement.py --calls DIR [POLICY ...]
    PYTHONPATH=src python benchmarks/sim_real_agreement.py --drift DIR [DIR ...]

Each DIR is a ``saga bench real --out DIR`` (summary.json, runs.jsonl, logs/). No engine
runs: the script simulates each recorded case as ``saga bench real`` does (same sessions,
tokenizer, KV size; each policy as deployed) and prints, per policy, the recorded real mean
TCT and prefix hit rate next to the simulator's, and, for the memory-bound case, the stock
engines' computed prompt tokens per second while requests waited (vLLM's own log lines)
next to the simulator's computed tokens per busy second.

``--calls`` prints instead, per repetition and policy of the memory-bound case, the real
run beside the simulator's replay of that repetition (at its own probe's speed), call by
call (saga.bench.real_vs_sim): held at the door, served, uncached prompt tokens, hit rate,
later calls that missed, later calls moved, those of the moves that left KV the home still
held (real: the gateway's record of its moves, ``moves``; sim: its placement misses), the
calls kept home that missed, and how late the real client sent its sessions' first calls.

``--drift`` prints instead, per run in the order they ran, the engines' speed its lone calls
say (the median over the calls that had their replica to themselves of the client's latency
over the fixed ``cpu-tiny`` preset's time for the call: a prefill past its cached prefix and
one decode step per further output token) beside its repetition's probe (alone): how far the
engines moved between and within repetitions, and how well each probe read them.

The repetitions' probes are refitted over the current ``cpu-tiny`` preset, as the bench
would fit their points today (the record holds the fit over the preset of its day);
``--contention X`` simulates with host contention X instead of the bench's.

``--points`` prints instead the calibration points the ``cpu-tiny`` preset is fitted to
(tests/integrations/data/cpu_tiny_bench.json): every call of the recorded runs that had its
replica to itself (no other call of the run on that replica between its send and its
answer), with its prompt, cached prompt and output tokens and its latency as the client
measured it (the gateway and HTTP included), and the engine-log throughput above.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from saga.bench.probe import fit_record
from saga.bench.real import RealBench, RealCase, calibrated_cluster, ranking, trace_path
from saga.bench.real_decompose import decompose
from saga.bench.real_drift import lone_ratios
from saga.bench.real_ranking import separated_pairs
from saga.bench.real_vs_sim import placements, send_lag, sim_record
from saga.engine.costmodel import DEFAULT_EFFICIENCY, CostModel, Efficiency
from saga.engine.hardware import get_gpu, get_model
from saga.engine.speedfit import SoloCall, fit_time_scale, scaled
from saga.integrations import engines as eng
from saga.integrations.replay import (
    gateway_estimates,
    gateway_runs,
    kv_cluster,
    load_sessions,
    plan,
    sim_workflows,
    simulate_deployed,
)

LOG_LINE = re.compile(
    r"Avg prompt throughput: ([\d.]+) tokens/s, Avg generation throughput: ([\d.]+) "
    r"tokens/s, Running: (\d+) reqs, Waiting: (\d+) reqs")


def _plan(case: RealCase) -> list[Any]:
    sessions = load_sessions(trace_path(case.trace), sessions=case.sessions,
                             calls=case.calls, max_prompt_chars=case.max_prompt_chars)
    return plan(sessions, max_tokens=case.max_tokens, time_compress=case.time_compress,
                max_gap=case.max_gap, arrival_interval=case.arrival_interval)


def _cases(summary: dict[str, Any]) -> list[RealCase]:
    return [RealCase.model_validate(c) for c in summary["settings"]["cases"]]


def vllm_runs(out: Path) -> list[dict[str, Any]]:
    """The vLLM runs of ``out``'s runs.jsonl: a whole `saga bench real` writes llama.cpp's
    runs there too (marked ``engine``), and their sessions share the vLLM runs' names."""
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    return [run for run in runs if "engine" not in run]


def solo_calls(out: Path, case: RealCase) -> list[dict[str, Any]]:
    """The calls of ``out``'s runs of ``case`` that had their replica to themselves."""
    max_tokens = {(f"s{k:03d}", i): c.max_tokens
                  for k, wf in enumerate(_plan(case)) for i, c in enumerate(wf.calls)}
    points = []
    for run in vllm_runs(out):
        if run.get("case", case.name) != case.name:
            continue
        log = run["call_log"]
        for c in log:
            wf, i, sent, latency, backend, status, prompt, cached = c
            alone = not any(o is not c and o[4] == backend and o[2] < sent + latency
                            and sent < o[2] + o[3] for o in log)
            if status == 200 and alone:
                points.append({"case": case.name, "policy": run["policy"],
                               "prompt": prompt, "cached": cached,
                               "output": max_tokens[(wf, i)], "latency": round(latency, 4)})
    return points


def saturated_throughput(out: Path) -> list[dict[str, Any]]:
    """Per engine log of ``out``: mean computed prompt tokens/s over the 10-second
    intervals that ended with requests waiting (vLLM logs computed tokens only)."""
    rows = []
    for log in sorted((out / "logs").glob("vllm-*.log")):
        text = log.read_text(errors="replace")
        values = [tuple(float(x) for x in m.groups()) for m in LOG_LINE.finditer(text)]
        saturated = [v for v in values if v[3] >= 1]
        if saturated:
            rows.append({"log": log.name, "saga_scheduler": "saga-stats" in text,
                         "intervals": len(saturated),
                         "prompt_tokens_per_s": round(statistics.mean(
                             v[0] for v in saturated), 1)})
    return rows


def drift(out: Path) -> None:
    """Per run, the lone calls' latency over ``cpu-tiny``'s time, beside its probe (see the
    module doc)."""
    summary = json.loads((out / "summary.json").read_text())
    spec = RealBench.model_validate(summary["settings"])
    outputs = {case.name: {(f"s{k:03d}", i): c.max_tokens
                           for k, wf in enumerate(_plan(case)) for i, c in enumerate(wf.calls)}
               for case in _cases(summary)}
    probes = summary.get("calibration", {}).get("repetitions", [])
    cost = CostModel(get_model("tiny-llama"), get_gpu("cpu-tiny"), 1,
                     DEFAULT_EFFICIENCY["cpu-tiny"])
    print(f"{out}: rep case policy | load | lone calls | their latency over cpu-tiny's "
          "(median) | the repetition's probe alone, prefill / decode over cpu-tiny")
    for run in vllm_runs(out):
        ratios = lone_ratios(run["call_log"], outputs[run["case"]], cost,
                             chunk=spec.max_num_batched_tokens)
        probe = (probes[run["repetition"]].get("solo")
                 if run["repetition"] < len(probes) else None)
        said = ("-" if probe is None else
                f"x{probe['prefill_scale']:.2f} / x{probe['decode_scale']:.2f}")
        median = f"x{statistics.median(ratios):.2f}" if ratios else "-"
        print(f"  {run['repetition']} {run['case']:6s} {run['policy']:14s} | "
              f"{run['load'][0]:4.1f}-{run['load'][-1]:4.1f} | {len(ratios):3d} | {median} | "
              f"{said}")


def simulate(case: RealCase, spec: RealBench, policy: str, cluster: str) -> Any:
    """``policy`` on ``case``'s sessions, simulated on ``cluster`` as ``saga bench real``
    simulates it."""
    salt = f"[real sim {case.name}]\n"
    plans = _plan(case)
    workflows = sim_workflows(plans, eng.tiny_model_dir() / "tokenizer.json", salt=salt,
                              block_tokens=spec.block_tokens)
    return simulate_deployed(workflows, cluster, policy, stock_engine=policy != "saga",
                             estimates=gateway_estimates(plans, salt=salt),
                             runs=gateway_runs(plans, salt=salt,
                                               block_tokens=spec.block_tokens),
                             token_scale_prior=spec.token_scale_prior)


def refitted(out: Path, summary: dict[str, Any], spec: RealBench) -> Efficiency:
    """``cpu-tiny`` at the one time scale the record's lone calls say (see the module doc)."""
    base = DEFAULT_EFFICIENCY["cpu-tiny"]
    calls = [SoloCall(c["prompt"], c["cached"], c["output"], c["latency"])
             for case in _cases(summary) for c in solo_calls(out, case)]
    scale = fit_time_scale(get_model("tiny-llama"), get_gpu("cpu-tiny"), base, calls,
                           chunk=spec.max_num_batched_tokens)
    print(f"{out}: {len(calls)} lone calls say x{scale:.3f} of cpu-tiny's time")
    return scaled(base, scale, scale)


def clusters(out: Path, summary: dict[str, Any], spec: RealBench, refit: bool,
             contention: float | None = None) -> list[str]:
    """The clusters the record's repetitions are simulated on, as the bench does: each
    repetition's probe (its engines alone and the host contention it measured:
    saga.bench.real.calibrated_cluster), else the fixed preset; with ``refit``, one time
    scale from the record's own lone calls; ``contention``: this host contention instead
    of the bench's."""
    if refit:
        return [kv_cluster(spec.kv_blocks - 1, efficiency=refitted(out, summary, spec),
                           host_contention=contention)]
    probes = [refit_probe(p, spec) for p in summary.get("calibration", {}).get("repetitions", [])]
    if contention is not None:
        return [kv_cluster(spec.kv_blocks - 1, host_contention=contention,
                           efficiency=Efficiency.model_validate(p["solo"]["efficiency"])
                           if "solo" in p else None)
                for p in probes] or [kv_cluster(spec.kv_blocks - 1, host_contention=contention)]
    return [calibrated_cluster(spec, p) for p in probes] or [calibrated_cluster(spec, None)]


def refit_probe(record: dict[str, Any], spec: RealBench) -> dict[str, Any]:
    """A repetition's probe as the bench fits it today: its recorded points fitted over the
    current ``cpu-tiny`` preset (the record holds the fit over the preset of its day, which
    a refitted preset no longer matches). A probe whose fit failed stays as recorded."""
    if "solo" not in record:
        return record
    return fit_record(record["points"], DEFAULT_EFFICIENCY["cpu-tiny"],
                      spec.max_num_batched_tokens)


def _door(workflows: Any) -> tuple[int, float]:
    """Workflows held at the door and their summed wait (simulated)."""
    held = [w.started_at - w.arrival for w in workflows if w.started_at - w.arrival > 1e-9]
    return len(held), sum(held)


def agreement(out: Path, refit: bool = False,
              contention: float | None = None) -> dict[str, dict[str, float]]:
    """Print the record's real figures against the simulator's; return the simulated mean
    TCT per case and policy (the mean over the repetitions' clusters)."""
    summary = json.loads((out / "summary.json").read_text())
    spec = RealBench.model_validate(summary["settings"])
    runs = vllm_runs(out)
    on = clusters(out, summary, spec, refit, contention)
    print(f"{out}: simulated on {', '.join(on)}")
    predicted: dict[str, dict[str, float]] = {}
    for case in _cases(summary):
        real = summary["cases"][case.name]
        print(f"{out} {case.name}: policy  mean TCT s real / sim (error)  hit rate real / sim"
              "  held at the door per run real / sim (mean wait s)")
        rates = []
        predicted[case.name] = {}
        for policy in spec.policies:
            results = [simulate(case, spec, policy, c) for c in on]
            tct = statistics.mean(statistics.mean(w.tct for w in r.workflows) for r in results)
            predicted[case.name][policy] = tct
            prompt = sum(c.prompt_tokens for r in results for c in r.calls)
            hit = sum(c.cached_tokens for r in results for c in r.calls) / prompt
            doors = [_door(r.workflows) for r in results]
            held = statistics.mean(n for n, _ in doors)
            wait = sum(s for _, s in doors) / max(1, sum(n for n, _ in doors))
            mine = [r for r in runs if r["case"] == case.name and r["policy"] == policy]
            real_held = statistics.mean(len(r["deferred"]) for r in mine) if mine else 0.0
            real_wait = (sum(sum(r["deferred"].values()) for r in mine)
                         / max(1, sum(len(r["deferred"]) for r in mine)))
            r = real[policy]
            print(f"  {policy:14s} {r['mean_tct']:6.2f} / {tct:6.2f} "
                  f"({(tct - r['mean_tct']) / r['mean_tct']:+.0%})  "
                  f"{r['hit_rate']:.1%} / {hit:.1%}  "
                  f"{real_held:.1f} ({real_wait:.1f}) / {held:.1f} ({wait:.1f})")
            if policy != "saga":
                busy = sum(x.busy_seconds for r in results for x in r.replicas)
                computed = sum(x.prompt_tokens - x.cached_tokens + x.recomputed_tokens
                               for r in results for x in r.replicas)
                rates.append(computed / busy)
        ranked = ranking({p: real[p]["mean_tct"] for p in spec.policies}, predicted[case.name])
        print(f"  ranking real: {', '.join(ranked['real'])}; sim: {', '.join(ranked['sim'])}"
              f" ({'same' if ranked['same'] else 'differs'})")
        paired = {p: {f"{r['repetition']}:{wf}": t for r in runs
                      if r["case"] == case.name and r["policy"] == p
                      for wf, t in r["tct"].items()} for p in spec.policies}
        sep = separated_pairs(paired, predicted[case.name])
        print("  pairs the real runs separate (paired 95 % CI excluding 1): "
              + (", ".join(f"{x['faster']} < {x['slower']} ({x['geomean']:.2f}, "
                           f"{x['ci_low']:.2f}-{x['ci_high']:.2f}): sim {x['sim_order']}"
                           for x in sep["separated"]) or "none")
              + "; ties: " + (", ".join(" = ".join(t) for t in sep["ties"]) or "none"))
        logs = [x for x in saturated_throughput(out) if not x["saga_scheduler"]]
        if logs and rates:
            print(f"  stock engines, computed prompt tokens/s: real (saturated log "
                  f"intervals) {statistics.mean(x['prompt_tokens_per_s'] for x in logs):.0f}"
                  f", sim (per busy second) {statistics.mean(rates):.0f}")
    return predicted


def calls(out: Path, policies: list[str], contention: float | None = None) -> None:
    """Per repetition and policy of the memory-bound case: the real run beside the
    simulator's replay of it (see the module doc)."""
    summary = json.loads((out / "summary.json").read_text())
    spec = RealBench.model_validate(summary["settings"])
    case = next(c for c in _cases(summary) if c.name == "memory")
    runs = vllm_runs(out)
    on = clusters(out, summary, spec, False, contention)
    print(f"{out}: rep policy source | TCT s | held s | served s | uncached tokens | hit rate"
          " | later calls missed | moved (tokens) | moved off KV home held | kept home, missed"
          " | first sends late (max s, over 0.25 s)")
    for rep in range(spec.repetitions):
        cluster = on[min(rep, len(on) - 1)]
        for policy in policies or list(spec.policies):
            real = [r for r in runs if r["case"] == "memory" and r["policy"] == policy
                    and r["repetition"] == rep]
            result = simulate(case, spec, policy, cluster)
            sim = [sim_record(result, policy, rep)]
            # moves that left KV at home: the gateway's record (the views' matched prefix
            # at home, with KV events the engine's) and the simulator's placement misses
            left = {"real": ("?" if not real or "moves" not in real[0] else
                             str(sum(m[6][m[2]] > 0 for m in real[0]["moves"]))),
                    "sim": str(sum(c.placement_missed_tokens > 0 for c in result.calls))}
            for source, records in (("real", real), ("sim", sim)):
                if not records:
                    continue
                (d,) = decompose(records)
                p = placements(records[0])
                lag, late = send_lag(records[0], case.arrival_interval)
                print(f"  {rep} {policy:14s} {source:4s} | {d.tct:6.2f} | {d.held:5.2f} | "
                      f"{d.served:5.2f} | {d.uncached_tokens:6,.0f} | {d.hit_rate:5.1%} | "
                      f"{d.later_misses:4.0%} | {p.moved} ({p.moved_uncached:,}) | "
                      f"{left[source]} | {p.home_missed} | {lag:.2f}, {late}")


def _records(parser: argparse.ArgumentParser, dirs: list[str]) -> list[Path]:
    """The recorded runs named, each checked before any simulation."""
    outs = [Path(d) for d in dirs]
    for out in outs:
        if not (out / "summary.json").is_file():
            parser.error(f"{out} holds no summary.json: name a `saga bench real --out` directory")
    return outs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description="Simulate recorded `saga bench real` runs as the bench does and print "
                    "each policy's real against simulated mean TCT and hit rate.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--points", action="store_true",
                      help="print the lone-call calibration points as JSON instead")
    mode.add_argument("--calls", action="store_true",
                      help="per repetition, the real runs of the memory case beside the "
                           "simulator's replay of each, call by call (one DIR, then "
                           "optionally the policies)")
    mode.add_argument("--drift", action="store_true",
                      help="per run, the engines' speed its lone calls say, beside its "
                           "repetition's probe")
    parser.add_argument("--contention", type=float, default=None, metavar="X",
                        help="simulate with this host contention instead of the bench's "
                             "(cpu-tiny's; saga.engine.contention)")
    mode.add_argument("--refit", action="store_true",
                      help="simulate at the time scale the record's own lone calls say "
                           "(a circular check)")
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a `saga bench real --out` directory")
    args = parser.parse_args(argv)
    if args.calls:
        calls(_records(parser, args.dirs[:1])[0], args.dirs[1:], args.contention)
        return
    outs = _records(parser, args.dirs)
    if args.drift:
        for out in outs:
            drift(out)
        return
    if args.points:
        points: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        for out in outs:
            summary = json.loads((out / "summary.json").read_text())
            for case in _cases(summary):
                points += solo_calls(out, case)
            logs += [{"case": ",".join(c.name for c in _cases(summary)), **x}
                     for x in saturated_throughput(out)]
        json.dump({"solo_calls": points, "saturated_logs": logs}, sys.stdout, indent=1)
        return
    for out in outs:
        agreement(out, args.refit, args.contention)


if __name__ == "__main__":
    main(sys.argv[1:])
