"""Does the capacity search's probe window bias its capacities? One policy's capacity on a
workload of the `capacity` scenario, searched by the scenario's own rules (goodput level,
target, tolerance, seeds, pool) but with a probe window of ``--window`` median TCTs alone
instead of the scenario's 8.

A probe offers the arrivals of its window and then lets the cluster drain with nothing more
arriving; when the workload's TCTs have a long tail (a mean TCT alone far above the median,
as agent sessions have), a window of a few median TCTs ends before the cluster holds the
workflows it would hold in a steady state, and the probe judges a cluster still filling up.
A capacity that falls as the window grows is that bias (docs/engine.md, "Load definition").
The scenario itself is not changed.

Run: PYTHONPATH=src python benchmarks/capacity_window.py coding vllm-affinity --window 24
[--quick] [--param count=600] [--workers 2]
(``--param`` overrides a workload param, e.g. the pool's ``count`` or ``limit``, so that a
longer window does not run out of workflows: the search then says "limited".)
"""

from __future__ import annotations

import argparse
import resource
from concurrent.futures import ProcessPoolExecutor

from saga.bench.capacity import capacity_on, start_rate
from saga.bench.scenario import load_scenario
from saga.bench.workloads import build_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", help="a capacity workload's label or name (coding, ...)")
    parser.add_argument("policy")
    parser.add_argument("--window", type=float, default=8.0, help="median TCTs alone")
    parser.add_argument("--quick", action="store_true", help="the quick scenario's workload")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a workload param (the pool's count or limit)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    spec = load_scenario("capacity")
    if args.quick:
        spec = spec.quick_version()
    chosen = next(w for w in spec.workloads if args.workload in (w.label, w.name))
    cluster = spec.cluster_for(chosen)
    overrides = dict(item.split("=", 1) for item in args.param)
    context = cluster.cost_model().model.max_context
    per_seed = {seed: build_spec(chosen, seed, overrides, context)[0] for seed in spec.seeds}
    with ProcessPoolExecutor(args.workers) as pool:
        case = capacity_on(
            cluster, per_seed, [args.policy], start=start_rate(spec, chosen),
            slowdown=spec.goodput_slowdown, target=spec.goodput_target,
            tolerance=spec.capacity_tolerance, window_tcts=args.window,
            warmup_tcts=spec.capacity_warmup, pool=pool, say=print, title=chosen.title,
        )
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"capacity of {args.policy} on {chosen.title} ({cluster.name}, seeds {spec.seeds}, "
          f"pool {case.workflows} workflows a seed), window {args.window:g} median TCTs alone "
          f"({case.window:.0f} s): {case.capacity[args.policy]:g} wf/s (bracketed: "
          f"{case.bracketed[args.policy]}, limited by the pool: "
          f"{case.limited[args.policy]}; {children.ru_utime + children.ru_stime:.0f} CPU s "
          "in the workers)")


if __name__ == "__main__":
    main()
