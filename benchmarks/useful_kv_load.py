"""Useful KV utilization at loads where memory binds: `saga` against another policy.

Runs policies on a workload of the quick `capacity` scenario exactly as the capacity search
probes it (the same pool, Poisson re-timing at the rate, window of 8 median TCTs alone;
:func:`saga.bench.capacity.offered`), one run per policy and seed, and prints per run the
parts of :func:`saga.metrics.summary.kv_useful_utilization`, each as block-seconds over the
run's KV capacity (blocks x seconds from the first arrival to the last finish):

* held: blocks a running call holds (:func:`~saga.metrics.summary.kv_utilization`'s busy part),
* waste: of those, blocks held while their call recomputes KV its workflow had computed
  before (a prefix evicted between calls, a preemption), or holding KV a preemption discarded,
* reused idle: cached blocks with no running call that were hit again (seconds while idle),
* useful = held - waste + reused idle (the metric), and kv_utilization = held + reused idle,

and the run's span, recomputed tokens and preemptions; then, per rate, the ratio of the
first policy's useful utilization over each other's (seeds pooled: summed block-seconds over
summed capacity). Rates are given in workflows/s or, with ``--of RATE``, as loads: multiples
of RATE (e.g. `vllm-affinity`'s goodput capacity).

Run: PYTHONPATH=src python benchmarks/useful_kv_load.py coding 0.7,1,1.5 \
    saga,vllm-affinity --of 0.01625 [--seeds 0,1]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from capacity_probe import alone_of, policy_named, pool_of, workload
from saga.bench.capacity import median_alone, offered
from saga.sim.simulator import Simulation


@dataclass
class Usage:
    """One run's KV block-seconds (summed over replicas) and its capacity in block-seconds."""

    capacity: float
    held: float
    waste: float
    reused_idle: float
    span: float
    recomputed: int
    preemptions: int
    offered: int

    @property
    def useful(self) -> float:
        return self.held - self.waste + self.reused_idle


def run(job: tuple[str, str, int, float, float]) -> Usage:
    label, policy, seed, rate, median = job
    cluster, _, window, _ = workload(label)
    kept, _ = offered(pool_of(label, seed), rate, seed, window * median)
    result = Simulation(cluster, policy_named(policy), kept, seed=seed).run()
    span = result.end - result.start
    return Usage(
        sum(r.capacity_blocks for r in result.replicas) * span,
        sum(r.busy_block_seconds for r in result.replicas),
        sum(r.wasted_block_seconds for r in result.replicas),
        sum(r.reused_idle_block_seconds for r in result.replicas),
        span,
        sum(c.recomputed_tokens for c in result.calls),
        sum(c.preemptions for c in result.calls),
        len(kept),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", help="a quick capacity workload: coding or claude-code")
    parser.add_argument("rates", help="comma-separated rates (wf/s), or loads with --of")
    parser.add_argument("policies", help="comma-separated; the first is compared to the rest")
    parser.add_argument("--of", type=float, default=None,
                        help="the rates are multiples of this rate (wf/s)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    policies = args.policies.split(",")
    scale = args.of if args.of is not None else 1.0
    rates = [float(r) * scale for r in args.rates.split(",")]
    with ProcessPoolExecutor(args.workers) as pool:
        alone = dict(zip(seeds, pool.map(alone_of, [(args.workload, s) for s in seeds]),
                         strict=True))
        median = median_alone(alone)
        jobs = [(args.workload, p, s, r, median) for r in rates for p in policies for s in seeds]
        usages = dict(zip([(r, p, s) for _, p, s, r, _ in jobs], pool.map(run, jobs),
                          strict=True))
    print(f"{args.workload}, seeds {seeds}: KV block-seconds over capacity (blocks x span)")
    print("rate (wf/s) | load | policy | seed | offered | span (s) | held | waste | reused idle "
          "| useful | kv_utilization | recomputed (M tok) | preemptions")
    for rate in rates:
        load = f"{rate / args.of:.2f}x" if args.of else "-"
        for policy in policies:
            for seed in seeds:
                u = usages[(rate, policy, seed)]
                print(f"{rate:.5g} | {load} | {policy} | {seed} | {u.offered} | {u.span:,.0f} | "
                      f"{u.held / u.capacity:.4f} | {u.waste / u.capacity:.4f} | "
                      f"{u.reused_idle / u.capacity:.4f} | {u.useful / u.capacity:.4f} | "
                      f"{(u.held + u.reused_idle) / u.capacity:.4f} | "
                      f"{u.recomputed / 1e6:.2f} | {u.preemptions}")
    print(f"useful utilization, {policies[0]} over each other policy (seeds pooled):")
    for rate in rates:
        def pooled(policy: str, rate: float = rate) -> float:
            runs = [usages[(rate, policy, s)] for s in seeds]
            return sum(u.useful for u in runs) / sum(u.capacity for u in runs)

        mine = pooled(policies[0])
        print(f"  {rate:.5g} wf/s: " + ", ".join(
            f"/{p} {mine / pooled(p):.2f}x" for p in policies[1:]))


if __name__ == "__main__":
    main()
