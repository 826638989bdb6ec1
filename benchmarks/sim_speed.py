"""How fast the simulator runs: paper-a100-64 serving one hour of agent traffic.

Prints wall time, events per second and what was simulated. Target (DEVELOPERS.md):
under 60 s on 2 cores. Run: python benchmarks/sim_speed.py [--rate R] [--policy P]
"""

from __future__ import annotations

import argparse
import time

from saga.engine.cluster import get_cluster
from saga.sim.run import run_policy
from saga.workloads import build_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster", default="paper-a100-64")
    parser.add_argument("--policy", default="vllm-affinity")
    parser.add_argument("--rate", type=float, default=0.25, help="workflow arrivals per second")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of arrivals")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    half = {"duration": str(args.duration), "rate": str(args.rate / 2)}
    coding = build_workload("coding-agent", seed=args.seed, params=half).workflows
    browser = build_workload("browser-agent", seed=args.seed + 1, params=half).workflows
    workflows = sorted(coding + browser, key=lambda w: (w.arrival, w.id))
    built = time.perf_counter() - started
    calls = sum(len(w.calls) for w in workflows)

    started = time.perf_counter()
    out = run_policy(get_cluster(args.cluster), args.policy, workflows, seed=args.seed,
                     isolated_cache={w.id: 1.0 for w in workflows})
    wall = time.perf_counter() - started
    events = out.result.events
    simulated = out.result.end - out.result.start
    print(f"cluster {args.cluster}, policy {args.policy}: {len(workflows)} workflows, "
          f"{calls} calls, {simulated:,.0f} simulated seconds")
    print(f"workload built in {built:.1f} s")
    print(f"simulation wall time: {wall:.1f} s  ({events:,} events, {events / wall:,.0f} events/s)")
    print(f"completed {out.summary['workflows_completed']} workflows, "
          f"prefix hit rate {out.summary['prefix_hit_rate']:.3f}, "
          f"TCT mean {out.summary['tct_mean']:.1f} s")


if __name__ == "__main__":
    main()
