"""TCT of SAGA configurations on a bench scenario's workload, against `vllm-affinity`.

What `saga bench SCENARIO [--quick]` reports for `saga` (mean TCT over completed workflows
and the speedup: the geometric mean over paired workflows of `vllm-affinity`'s TCT over the
policy's), for policies the registry does not name: `saga:FIELD=JSON;FIELD=JSON` runs SAGA
with those `SagaConfig` fields (as benchmarks/capacity_probe.py), so that a rule can be
checked against the headline before it becomes a default. One run per policy and seed, on
the scenario's first workload and cluster, seeds not pooled. The workload runs with its own
params as the scenario file gives them: the bench's figures for scenarios that fix their
rate (`claude-code`), not for those whose bench sets the rate from a measured peak (`paper`).

Run: PYTHONPATH=src python benchmarks/variant_tct.py claude-code \
    'saga,saga:fit_first_wait=null' --seeds 0,1 [--full]
"""

from __future__ import annotations

import argparse
import math
import statistics
from concurrent.futures import ProcessPoolExecutor

from capacity_probe import policy_named
from saga.bench.scenario import load_scenario
from saga.bench.workloads import build_spec
from saga.sim.simulator import Simulation

BASELINE = "vllm-affinity"


def run(job: tuple[str, bool, str, int]) -> dict[str, float]:
    """Each completed workflow's TCT under ``policy``."""
    scenario, full, policy, seed = job
    spec = load_scenario(scenario)
    if not full:
        spec = spec.quick_version()
    workload = spec.workloads[0]
    cluster = spec.cluster_for(workload)
    workflows = build_spec(workload, seed, {}, cluster.cost_model().model.max_context)[0]
    result = Simulation(cluster, policy_named(policy), workflows, seed=seed).run()
    return {w.workflow: w.finished_at - w.arrival for w in result.workflows
            if w.finished_at >= 0 and not w.rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", help="a built-in scenario (its first workload)")
    parser.add_argument("policies", help="comma-separated names or saga:FIELD=JSON;...")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--full", action="store_true", help="the full scenario, not quick")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    policies = args.policies.split(",")
    jobs = [(args.scenario, args.full, p, s) for p in [BASELINE, *policies] for s in seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        tcts = dict(zip([(p, s) for _, _, p, s in jobs], pool.map(run, jobs), strict=True))
    print(f"{args.scenario} ({'full' if args.full else 'quick'}): mean TCT, and the "
          f"geometric mean of {BASELINE}'s TCT over the policy's on paired workflows")
    for policy in policies:
        for seed in seeds:
            base, mine = tcts[(BASELINE, seed)], tcts[(policy, seed)]
            paired = [w for w in mine if w in base]
            speedup = math.exp(statistics.mean(math.log(base[w] / mine[w]) for w in paired))
            print(f"{policy} | seed {seed} | mean TCT {statistics.mean(mine.values()):,.1f} s | "
                  f"{speedup:.4f}x | {len(mine)} completed")


if __name__ == "__main__":
    main()
