"""What the `capacity` scenario's search costs: CPU seconds per policy and workload, and the
projection to every policy of the scenario.

Runs the capacity search of the `capacity` scenario (full, or `--quick`) for the policies
named, on the workloads named, exactly as `saga bench capacity` runs it (one pool of two
worker processes, every search at once), and prints per workload and policy: the probes,
the failed ones that stopped early, the probes' CPU seconds (each worker's own CPU time,
so the figure holds on a loaded machine) and the capacity found; then the CPU seconds of
the TCTs alone (the pool's CPU over the run, less the probes'), and the projection to the
scenario's whole policy list: TCTs alone plus (mean CPU per policy searched) x policies,
with the wall time on two cores (CPU / 2, when both are kept busy). "twin": the probes a
policy took from its gated twin (searched too), whose gate held nobody: they cost nothing,
so a subset projects the whole list's reuse only if it holds pairs in the same proportion.

Run: PYTHONPATH=src python benchmarks/capacity_cost.py [--quick] \
    [--policies saga,vllm-affinity] [--workloads coding,claude-code]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from saga.bench.capacity import measure_capacities
from saga.bench.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick capacity scenario")
    parser.add_argument("--policies", default="saga,vllm-affinity",
                        help="comma-separated policies of the scenario to search")
    parser.add_argument("--workloads", default="",
                        help="comma-separated workload titles (default: every one)")
    args = parser.parse_args()
    scenario = load_scenario("capacity")
    spec = scenario.quick_version() if args.quick else scenario
    policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(policies) - set(spec.policies))
    titles = {w.title for w in spec.workloads}
    wanted = [t for t in args.workloads.split(",") if t] or sorted(titles)
    if unknown or set(wanted) - titles:
        sys.exit(f"usage error: unknown policies {unknown} or workloads "
                 f"{sorted(set(wanted) - titles)} (workloads: {sorted(titles)})")
    spec = spec.model_copy(update={"policies": policies})
    workloads = [w for w in spec.workloads if w.title in wanted]
    started = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        cases = measure_capacities(spec, workloads, pool,
                                   lambda m: print(f"{time.perf_counter() - started:7.0f} s  {m}",
                                                   flush=True))
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool_cpu = children.ru_utime + children.ru_stime
    probes_cpu = sum(sum(c.cpu_seconds.values()) for c in cases)
    alone_cpu = max(0.0, pool_cpu - probes_cpu)
    full = len(scenario.quick_version().policies if args.quick else scenario.policies)
    print(f"\ncapacity scenario{' (quick)' if args.quick else ''}: seeds {spec.seeds}")
    for case in cases:
        print(f"\n{case.workload} on {case.cluster} x{case.replicas} "
              f"({case.workflows} workflows per seed), wall {case.wall_seconds:.0f} s")
        print(f"{'policy':<24}{'probes':>7}{'stopped':>8}{'twin':>6}{'CPU s':>9}"
              f"{'capacity':>11}")
        for policy in policies:
            points = [p for p in case.points if p.policy == policy]
            bound = "" if case.bracketed[policy] else " (>=)" if case.limited[policy] else " (?)"
            print(f"{policy:<24}{len(points):>7}{sum(p.stopped for p in points):>8}"
                  f"{sum(bool(p.twin) for p in points):>6}"
                  f"{case.cpu_seconds.get(policy, 0.0):>9.1f}{case.capacity[policy]:>11.4g}{bound}")
    per_policy = probes_cpu / len(policies)
    projected = alone_cpu + per_policy * full
    print(f"\nCPU s: probes {probes_cpu:.0f}, TCTs alone {alone_cpu:.0f}, pool {pool_cpu:.0f}; "
          f"wall {wall:.0f} s")
    print(f"projection to the scenario's {full} policies: {alone_cpu:.0f} + {per_policy:.0f} x "
          f"{full} = {projected:.0f} CPU s = {projected / 2 / 60:.1f} min on two busy cores")


if __name__ == "__main__":
    main()
