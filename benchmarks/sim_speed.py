"""How fast the simulator runs: a cluster serving one hour of agent traffic.

Prints wall and CPU time, events per wall second, events per simulated second and
what was simulated. The default is paper-a100-64 (16 replicas of Llama-3.1-70B, TP 4:
64 GPUs) at 0.25 workflows/s; ``--gpus N`` scales the preset to N GPUs (N / TP
replicas) and the arrival rate with it, so every replica sees the same load
(``--gpus 1024``: 256 replicas). ``--load F`` sets the rate to F times the rate
vllm-affinity sustains on this mix for the hour (``CAPACITY_PER_64_GPUS``, scaled with the
GPUs), ``--sustained`` judges after the timed run whether its rate was sustained (the goodput
rule over all the workflows and over the last quarter's arrivals, and the hit rate),
``--capacity`` runs saga.bench.capacity's probe search instead of timing a run (it
over-estimates what an hour sustains on this mix: ``PROBE_CAPACITY_PER_64_GPUS``). The
default 0.25/s is 2.4x the sustained rate: an overload. Targets (issue 21): 64 GPUs under
10 s, 1,024 GPUs at 70 % of capacity (``--gpus 1024 --load 0.7``) under 60 s, on 2 cores.
CPU time (user + sys of this process) is the figure to compare on a shared machine; wall time
moves with the load of the other processes.

Run: python benchmarks/sim_speed.py [--gpus N] [--rate R | --load F] [--policy P]
[--profile FILE] [--summary FILE] [--sustained] [--capacity] (``--profile`` writes cProfile
stats of the simulation only; read them with pstats; ``--summary`` writes the run's summary.json,
to check that an optimization changed no decision: the same seed must give the same
bytes).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from saga.bench.capacity import capacity_on
from saga.compiled import describe
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.metrics.stationarity import arrival_slices, drifting, met_level
from saga.sim.run import RunOutput, isolated_tcts, run_policy
from saga.workloads import build_workload

BASE_RATE = 0.25
"""Workflow arrivals per second on the default 64 GPUs."""

CAPACITY_PER_64_GPUS = 0.105
"""The rate vllm-affinity sustains on this mix for the hour on 64 GPUs (16 replicas),
workflows/s: ``python benchmarks/sim_speed.py --rate R --sustained --seed S`` for seeds 0 and
1, bisected to 5 %: at 0.105 both seeds serve 90 % of the hour's workflows within 2x their TCT
alone and 90 % of the last quarter's arrivals too (91.8 %, 90.5 %); at 0.11 the last quarter
gets 90.8 % and 87.7 % (89.3 % pooled), at 0.12 87.8 % and 84.2 %. ``--load`` scales it with the
GPUs, which over-estimates at 1,024: there 1.5/s is sustained, 1.59/s (last quarter 89.7 %)
and 16x this (1.68/s, 86.7 %) are not (docs/engine.md, "Load definition")."""

PROBE_CAPACITY_PER_64_GPUS = 0.24
"""For reference: what the capacity search's probes give for the same policy and mix
(``--capacity --rate 0.12``; probes of 8 median TCTs alone, ~2,000 s: served at 0.24, 92 %,
not at 0.255). It is 2.3x the sustained rate: this mix's mean TCT alone is 8x its median, and
a probe's window ends with the cluster holding under 40 % of the workflows it holds in a steady
state, so the probe judges a cluster still filling up."""


def mix(cluster: ClusterSpec, rate: float, duration: float, seed: int) -> list[Workflow]:
    """Coding and browser agents, half the rate each, arriving for ``duration`` seconds,
    built as `saga simulate` builds them: each client keeps its prompts within the
    model's window."""
    half = {"duration": str(duration), "rate": str(rate / 2)}
    window = cluster.cost_model().model.max_context
    coding = build_workload("coding-agent", seed=seed, params=half,
                            context_window=window).workflows
    browser = build_workload("browser-agent", seed=seed + 1, params=half,
                             context_window=window).workflows
    return sorted(coding + browser, key=lambda w: (w.arrival, w.id))


def measure_capacity(
    cluster: ClusterSpec, policy: str, seed: int, start: float, pool_rate: float
) -> None:
    """Print the policy's goodput capacity on the mix (the `capacity` scenario's rules:
    90 % of workflows within 2x their TCT alone, windows of 8 median TCTs alone, bisected
    to 5 %), probing ``start`` first; the pool is the hour of arrivals at ``pool_rate``."""
    pool = {seed: mix(cluster, pool_rate, 3600.0, seed)}
    cpu = _cpu_seconds()
    with ProcessPoolExecutor(1) as executor:
        case = capacity_on(cluster, pool, [policy], start=start, slowdown=2.0, target=0.9,
                           tolerance=0.05, window_tcts=8.0, warmup_tcts=1.0, pool=executor,
                           say=print)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = _cpu_seconds() - cpu + children.ru_utime + children.ru_stime
    print(f"capacity of {policy} on {cluster.gpus} GPUs: {case.capacity[policy]:g} wf/s "
          f"(bracketed: {case.bracketed[policy]}, limited by the pool: "
          f"{case.limited.get(policy, False)}; {cpu:.0f} CPU s)")


def judge_sustained(cluster: ClusterSpec, workflows: list[Workflow], out: RunOutput) -> None:
    """Print whether the run's rate was sustained over all its arrivals: the goodput rule
    (90 % of all the workflows within 2x their TCT alone, computed here, after the timed
    run) and stationarity by arrival quarter (the last quarter's arrivals served by the same
    rule, the hit rate not fallen: saga.metrics.stationarity)."""
    isolated = isolated_tcts(cluster, workflows)
    met = sum(1 for w in out.result.workflows if met_level(w, isolated[w.workflow], 2.0))
    share = met / len(out.result.workflows)
    print(f"goodput: {met} of {len(out.result.workflows)} workflows within 2x their TCT "
          f"alone ({100 * share:.1f} %: {'served' if share >= 0.9 else 'not served'})")
    parts = arrival_slices(out.result, isolated, slices=4, slowdown=2.0)
    for part in parts:
        print(f"  arrivals {part.start:7.0f}-{part.end:7.0f} s: {part.workflows:5d} workflows, "
              f"{100 * part.attainment:5.1f} % within 2x, slowdown mean "
              f"{part.slowdown_mean:6.2f} median {part.slowdown_median:5.2f}, hit rate "
              f"{part.hit_rate:.3f}")
    reasons = drifting(parts)
    print("stationary" if not reasons else "drifting: " + "; ".join(reasons))
    print(f"sustained: {'yes' if share >= 0.9 and not reasons else 'no'}")


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
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument("--rate", type=float, default=None,
                       help="workflow arrivals per second (default 0.25 per 64 GPUs)")
    rates.add_argument("--load", type=float, default=None,
                       help="arrivals as a fraction of what vllm-affinity sustains for the hour")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of arrivals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="write cProfile stats here")
    parser.add_argument("--summary", default=None, help="write the run's summary.json here")
    parser.add_argument("--capacity", action="store_true",
                        help="measure the policy's goodput capacity on the mix instead")
    parser.add_argument("--sustained", action="store_true",
                        help="after the timed run, judge whether its rate was sustained")
    args = parser.parse_args()
    for flag, value in (("--rate", args.rate), ("--load", args.load)):
        if value is not None and value <= 0:
            parser.error(f"{flag} must be above 0, got {value:g}")

    cluster = get_cluster(args.cluster)
    if args.gpus is not None:
        if args.gpus % cluster.tp:
            parser.error(f"--gpus must be a multiple of the preset's TP ({cluster.tp})")
        cluster = cluster.model_copy(update={"replicas": args.gpus // cluster.tp})
    scale = cluster.gpus / 64
    if args.rate is not None:
        rate = args.rate
    elif args.load is not None:
        # rounded so that the rate (and so the workload) is the one --rate would give
        rate = round(args.load * CAPACITY_PER_64_GPUS * scale, 9)
    else:
        rate = BASE_RATE * scale
    if args.capacity:
        measure_capacity(cluster, args.policy, args.seed, rate, BASE_RATE * scale)
        return

    started = time.perf_counter()
    workflows = mix(cluster, rate, args.duration, args.seed)
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
    print(f"workload built in {built:.1f} s; engine model: {describe()}")
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
    if args.sustained:
        judge_sustained(cluster, workflows, out)


if __name__ == "__main__":
    main()
