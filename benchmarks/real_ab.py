"""Two codes' real runs, paired run by run: each code's means, saga's within-run ratios, and
how much the change moved them.

    PYTHONPATH=src python benchmarks/real_ab.py --base DIR [DIR ...] --new DIR [DIR ...]
        [--case memory] [--vs NAME ...]

Each DIR is one ``run_real(..., repetitions=1)`` output (its runs.jsonl); the i-th --base
folder pairs with the i-th --new folder (two runs of the same policies minutes apart, on a
machine that may be shared). Printed per code: each policy's mean TCT over the runs (and per
run), the 1-minute load at each run's start, the prefix hit rate and the sessions the
gate held at the door (how many, their mean wait), and saga's paired geomean over each baseline
(sessions pooled over the runs, 95 % bootstrap interval). Then, paired by (run pair,
session): each policy's TCT at BASE over with the change (the unchanged baselines move
only with the load), and the change of saga's within-run ratio over each baseline, i.e. the
geomean of (baseline / saga with the change) / (baseline / saga at BASE), where the load
a run shared cancels out; and the same ratio's change on the runs' mean TCTs, paired by run
pair, whose interval resamples the run pairs (a run's sessions share its load: the
per-session interval is too narrow when the load moves between runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saga.metrics.summary import speedup


def _runs(folder: Path, case: str) -> dict[str, dict[str, Any]]:
    """The runs of ``case`` in ``folder``, by policy."""
    out = {}
    for line in (folder / "runs.jsonl").read_text().splitlines():
        run = json.loads(line)
        if run["case"] == case:
            out[run["policy"]] = run
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _hit_rate(runs: list[dict[str, Any]]) -> str:
    """The prompt tokens the engines found cached over those they were asked for, pooled
    over ``runs`` (their prefix-cache counters), and each run's."""
    hits = [r["prefix_hits"] for r in runs]
    queries = [r["prefix_queries"] for r in runs]
    each = ", ".join(f"{h / q:.1%}" for h, q in zip(hits, queries, strict=True) if q)
    return f"hits {sum(hits) / sum(queries) if sum(queries) else 0:.1%} (runs {each})"


def _ci(s: dict[str, float]) -> str:
    return f"{s['geomean']:.2f} ({s['ci_low']:.2f}-{s['ci_high']:.2f}, {s['n']} pairs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", nargs="+", type=Path, required=True)
    parser.add_argument("--new", nargs="+", type=Path, required=True)
    parser.add_argument("--case", default="memory")
    parser.add_argument("--vs", nargs="+", default=["vllm-affinity", "continuum"])
    parser.add_argument("--late", nargs="+", default=[],
                        help="session ids (e.g. s008 s009) whose saga TCT is shown apart "
                        "from the others', per code, with their wait at the door")
    args = parser.parse_args(argv)
    if len(args.base) != len(args.new):
        parser.error("--base and --new need the same number of folders (run i pairs with i)")
    codes = {"BASE": [_runs(d, args.case) for d in args.base],
             "new": [_runs(d, args.case) for d in args.new]}
    policies = ["saga", *args.vs]
    # (run pair, session) -> TCT, per code and policy
    tct: dict[str, dict[str, dict[str, float]]] = {}
    for code, runs in codes.items():
        tct[code] = {}
        for policy in policies:
            tct[code][policy] = {f"{i}/{w}": t for i, run in enumerate(runs) if policy in run
                                 for w, t in run[policy]["tct"].items()}
        print(f"{code}:")
        for policy in policies:
            means = [_mean(list(run[policy]["tct"].values())) for run in runs if policy in run]
            loads = [run[policy]["load"][0] for run in runs if policy in run]
            ran = [run[policy] for run in runs if policy in run]
            held = [t for r in ran for t in r.get("deferred", {}).values()]
            print(f"  {policy}: mean TCT {_mean(list(tct[code][policy].values())):.2f} s "
                  f"(runs {', '.join(f'{m:.1f}' for m in means)}; load at their starts "
                  f"{', '.join(f'{x:.1f}' for x in loads)}); "
                  f"{_hit_rate(ran)}, held {len(held)} sessions"
                  + (f", {_mean(held):.1f} s each" if held else ""))
        if args.late:
            late = [t for k, t in tct[code]["saga"].items() if k.split("/")[1] in args.late]
            rest = [t for k, t in tct[code]["saga"].items() if k.split("/")[1] not in args.late]
            waits = [run["saga"].get("deferred", {}).get(w, 0.0) for run in runs if "saga" in run
                     for w in args.late]
            print(f"  saga's sessions {', '.join(args.late)}: mean TCT {_mean(late):.2f} s, "
                  f"at the door {_mean(waits):.2f} s; the others {_mean(rest):.2f} s")
        for baseline in args.vs:
            print(f"  saga over {baseline}: "
                  f"{_ci(speedup(tct[code][baseline], tct[code]['saga']))}")
    print("paired by (run pair, session), BASE's TCT over the change's (>1: faster with it):")
    for policy in policies:
        print(f"  {policy}: {_ci(speedup(tct['BASE'][policy], tct['new'][policy]))}")
    for baseline in args.vs:
        within = {code: {k: tct[code][baseline][k] / t for k, t in tct[code]["saga"].items()
                         if k in tct[code][baseline]} for code in codes}
        print(f"  saga's within-run ratio over {baseline}, with the change over at BASE: "
              f"{_ci(speedup(within['new'], within['BASE']))}")
    # A run's sessions share its load, so the intervals above, which resample sessions as
    # if independent, are too narrow when the load moves between runs; the run pairs are
    # the independent units.
    print("paired by run pair, on the runs' mean TCTs (the interval resamples the pairs):")
    for baseline in args.vs:
        ratios = {code: run_ratios(runs, baseline) for code, runs in codes.items()}
        change = {i: ratios["new"][i] / r for i, r in ratios["BASE"].items() if i in ratios["new"]}
        print(f"  saga's within-run ratio over {baseline}, with the change over at BASE: "
              f"{_ci(speedup(ratios['new'], ratios['BASE']))}; per pair "
              f"{', '.join(f'{change[i]:.2f}' for i in sorted(change))}")
    return 0


def run_ratios(runs: list[dict[str, dict[str, Any]]], baseline: str) -> dict[str, float]:
    """Per run (by its index), ``baseline``'s mean TCT over saga's in that run."""
    return {str(i): _mean(list(run[baseline]["tct"].values()))
            / _mean(list(run["saga"]["tct"].values()))
            for i, run in enumerate(runs) if baseline in run and "saga" in run}


if __name__ == "__main__":
    raise SystemExit(main())
