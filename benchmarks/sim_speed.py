"""How fast the simulator runs: a cluster serving one hour of agent traffic.

Prints wall and CPU time, events per wall second, events per simulated second and
what was simulated. The default is paper-a100-64 (16 replicas of Llama-3.1-70B, TP 4:
64 GPUs) at 0.25 workflows/s; ``--gpus N`` scales the preset to N GPUs (N / TP
replicas) and the arrival rate with it, so every replica sees the same load
(``--gpus 1024``: 256 replicas). Targets (issue 21): 64 GPUs under 10 s, 1,024 GPUs
under 60 s, on 2 cores. CPU time (user + sys of this process) is the figure to compare
on a shared machine; wall time moves with the load of the other processes.

Run: python benchmarks/sim_speed.py [--gpus N] [--rate R] [--policy P] [--profile FILE]
[--summary FILE] (``--profile`` writes cProfile stats of the simulation only; read them
with pstats; ``--summary`` writes the run's summary.json, to check that an optimization
changed no decision: the same seed must give the same bytes).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import time
from pathlib import Path

from saga.engine.cluster import get_cluster
from saga.sim.run import run_policy
from saga.workloads import build_workload

BASE_RATE = 0.25
"""Workflow arrivals per second on the default 64 GPUs."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="paper-a100-64")
    parser.add_argument("--gpus", type=int, default=None,
                        help="scale the cluster to this many GPUs (and the rate with it)")
    parser.add_argument("--policy", default="vllm-affinity")
    parser.add_argument("--rate", type=float, default=None,
                        help="workflow arrivals per second (default 0.25 per 64 GPUs)")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of arrivals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="write cProfile stats here")
    parser.add_argument("--summary", default=None, help="write the run's summary.json here")
    args = parser.parse_args()

    cluster = get_cluster(args.cluster)
    if args.gpus is not None:
        if args.gpus % cluster.tp:
            parser.error(f"--gpus must be a multiple of the preset's TP ({cluster.tp})")
        cluster = cluster.model_copy(update={"replicas": args.gpus // cluster.tp})
    rate = args.rate if args.rate is not None else BASE_RATE * cluster.gpus / 64

    started = time.perf_counter()
    half = {"duration": str(args.duration), "rate": str(rate / 2)}
    # as `saga simulate` builds them: each client keeps its prompts within the model's window
    window = cluster.cost_model().model.max_context
    coding = build_workload("coding-agent", seed=args.seed, params=half,
                            context_window=window).workflows
    browser = build_workload("browser-agent", seed=args.seed + 1, params=half,
                             context_window=window).workflows
    workflows = sorted(coding + browser, key=lambda w: (w.arrival, w.id))
    built = time.perf_counter() - started
    calls = sum(len(w.calls) for w in workflows)

    # CPU time, not wall time: on a loaded machine a wall-clock profile charges the time
    # the process waited for a core to whatever function it was in
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    cpu = _cpu_seconds()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    out = run_policy(cluster, args.policy, workflows, seed=args.seed,
                     isolated_cache={w.id: 1.0 for w in workflows})
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    events = out.result.events
    simulated = out.result.end - out.result.start
    print(f"cluster {cluster.name} x{cluster.replicas} replicas ({cluster.gpus} GPUs), "
          f"policy {args.policy}, rate {rate:g}/s: {len(workflows)} workflows, "
          f"{calls} calls, {simulated:,.0f} simulated seconds")
    print(f"workload built in {built:.1f} s")
    print(f"simulation wall time: {wall:.1f} s, CPU time {cpu:.1f} s  ({events:,} events, "
          f"{events / wall:,.0f} events/s, {events / max(simulated, 1e-9):,.1f} events per "
          "simulated second)")
    if args.summary:
        Path(args.summary).write_text(json.dumps(out.summary, indent=2, sort_keys=True) + "\n")
    print(f"completed {out.summary['workflows_completed']} workflows "
          f"(rejected {out.summary.get('workflows_rejected', 0)}, calls over the model's "
          f"context {out.summary.get('calls_over_context', 0)}), "
          f"prefix hit rate {out.summary['prefix_hit_rate']:.3f}, "
          f"TCT mean {out.summary['tct_mean']:.1f} s")


if __name__ == "__main__":
    main()
