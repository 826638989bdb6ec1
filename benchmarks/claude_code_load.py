"""Mean TCT on real Claude Code sessions across offered loads (issue 14's target).

Replays the first N real Claude Code sessions (the `claude-code` scenario's workload: human
gaps capped at 60 s, contexts compacted at the model's window, ends seen only after the idle
timeout) at several Poisson arrival rates, each stated as a multiple of vllm-affinity's
goodput capacity on the cluster, and prints for every policy its mean TCT against
vllm-affinity's: the ratio of means, the geomean of paired ratios, the ceiling of each (every
session at its TCT alone, saga.bench.loads) and the ratio of the delays added to the
sessions' own time. The same sessions and arrival order at every load (one seed).

    python benchmarks/claude_code_load.py --quick             # a100-8-70b, 30 and 120 sessions
    python benchmarks/claude_code_load.py --sessions 200 --loads 1/2,1,2,4,8   # h100-64-70b

The tables and what they say: docs/claude-code-load.md.

``--capacity`` is vllm-affinity's goodput capacity in wf/s on the cluster (the `capacity`
scenario's figure; defaults: 0.003 on a100-8-70b, its quick run; on h100-64-70b the
lower bound measured in docs/claude-code-load.md). Prints the CPU time of the simulations.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

from saga.bench.loads import LoadRow, load_row, markdown
from saga.core.workflow import Workflow
from saga.engine.cluster import get_cluster
from saga.errors import UserError
from saga.sched.registry import build_policy
from saga.sim.run import isolated_tcts, run_policy
from saga.workloads import build_workload

BASELINE = "vllm-affinity"
POLICIES = ("saga", BASELINE, "sglang+gate", "llm-d+gate")
# 10/3: the claude-code scenario's quick rate (0.01 wf/s on a100-8-70b)
LOADS = ("1/2", "1", "2", "10/3", "5", "8")
# vllm-affinity's goodput capacity (wf/s) per cluster on the `capacity` scenario's claude-code
# workload: a100-8-70b from its quick run (docs/RESULTS.md); h100-64-70b only a lower bound
# (served at 0.04 wf/s when its pool of 600 sessions ran out, docs/claude-code-load.md), so
# loads stated over it are upper bounds
CAPACITY = {"a100-8-70b": 0.003, "h100-64-70b": 0.04}


def sessions(cluster: str, count: int, rate: float, seed: int) -> list[Workflow]:
    window = get_cluster(cluster).cost_model().model.max_context
    params = {"rate": str(rate), "limit": str(count), "human_gap": "cap", "human_cap": "60"}
    built = build_workload("claude-code", seed=seed, params=params, context_window=window)
    return list(built.workflows)


def alone_job(job: tuple[str, int, int, int]) -> dict[str, float]:
    cluster, count, seed, part = job
    workflows = sessions(cluster, count, 1.0, seed)[part::2]  # arrivals do not matter alone
    return isolated_tcts(get_cluster(cluster), workflows)


def policy_job(job: tuple[str, int, float, int, str]) -> dict[str, float]:
    cluster, count, rate, seed, policy = job
    out = run_policy(get_cluster(cluster), policy, sessions(cluster, count, rate, seed), seed=seed)
    return {
        w.workflow: w.finished_at - w.arrival
        for w in out.result.workflows if w.finished_at >= 0 and not w.rejected
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a100-8-70b, 30 sessions (the quick headline) and 120")
    parser.add_argument("--cluster", default=None, help="default h100-64-70b (quick: a100-8-70b)")
    parser.add_argument("--sessions", default=None,
                        help="comma-separated session counts (default 200; quick: 30,120)")
    parser.add_argument("--loads", default=",".join(LOADS),
                        help="offered loads, in multiples of vllm-affinity's capacity "
                        "(fractions allowed: 10/3)")
    parser.add_argument("--capacity", type=float, default=None,
                        help="vllm-affinity's goodput capacity in wf/s on the cluster")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    cluster = args.cluster or ("a100-8-70b" if args.quick else "h100-64-70b")
    try:
        counts = [int(x) for x in (args.sessions or ("30,120" if args.quick else "200")).split(",")]
        loads = [float(Fraction(x)) for x in args.loads.split(",")]
    except (ValueError, ZeroDivisionError) as exc:
        parser.error(f"--sessions takes whole numbers and --loads numbers or fractions: {exc}")
    if min(counts) < 1 or min(loads) <= 0:
        parser.error("--sessions must be at least 1 and every --loads value above 0")
    policies = args.policies.split(",")
    for name in policies:
        try:
            build_policy(name)  # an unknown name fails here, before any simulation
        except UserError as exc:
            parser.error(str(exc))
    capacity = args.capacity if args.capacity is not None else CAPACITY.get(cluster)
    if capacity is None:
        print(f"claude_code_load: give --capacity for {cluster}", file=sys.stderr)
        return 2
    if BASELINE not in policies:
        policies.insert(0, BASELINE)
    started = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))
    tables: dict[int, list[LoadRow]] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for count in counts:
            alone: dict[str, float] = {}
            for part in pool.map(alone_job, [(cluster, count, args.seed, p) for p in (0, 1)]):
                alone.update(part)
            jobs = [(cluster, count, capacity * load, args.seed, policy)
                    for load in loads for policy in policies]
            tcts = dict(zip([(j[2], j[4]) for j in jobs], pool.map(policy_job, jobs), strict=True))
            rows = [
                load_row(load, capacity * load, policy, tcts[capacity * load, BASELINE],
                         tcts[capacity * load, policy], alone)
                for load in loads for policy in policies if policy != BASELINE
            ]
            tables[count] = rows
            print(f"\n{count} real Claude Code sessions on {cluster}, seed {args.seed}; "
                  f"vllm-affinity's goodput capacity {capacity:g} wf/s\n", flush=True)
            print(markdown(rows, BASELINE), flush=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"simulations: {children.ru_utime + children.ru_stime:.0f} CPU s "
          f"({time.perf_counter() - started:.0f} s wall)")
    if args.json is not None:
        args.json.write_text(json.dumps(
            {str(c): [asdict(r) for r in rows] for c, rows in tables.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
