"""Sizing a capacity workload: does its pool hold what the window offers, and where do the
policies stand on a candidate cluster?

For a workload of the full `capacity` scenario (`coding`, `claude-code`), optionally on
another cluster preset and with another pool size (`--count` for a registry generator,
`--limit` for a trace), prints the median TCT alone and the probe window (the scenario's
8 median TCTs alone), then per rate and seed the workflows the window offers and whether
the pool ran out first (the search would call a served rate there "at least"). With
`--policies`, it also runs one search probe per policy and rate, exactly as the search does
(:func:`saga.bench.capacity.probe`: seeds in order, early verdicts, so a share is a bound
where the probe stopped), and prints the verdict, each seed's state and the worker's CPU.

Run: PYTHONPATH=src python benchmarks/capacity_pool.py claude-code --cluster paper-a100-64 \
    --rates 0.02,0.025 --policies saga,vllm-affinity,sglang
     PYTHONPATH=src python benchmarks/capacity_pool.py coding --count 2000 --rates 0.1 \
    --policies saga
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

from saga.bench.capacity import ProbeJob, SeedOutcome, median_alone, offered, probe
from saga.bench.scenario import WorkloadSpec, load_scenario
from saga.bench.workloads import build_spec
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.sim.run import isolated_tcts


def setting(label: str, cluster: str, count: str, limit: str
            ) -> tuple[ClusterSpec, WorkloadSpec, float, float]:
    """The full scenario's workload ``label`` with the overrides: cluster, spec, window and
    warm-up (in median TCTs alone)."""
    spec = load_scenario("capacity")
    chosen = next(w for w in spec.workloads if label in (w.label, w.name))
    params = dict(chosen.params)
    if count:
        params["count"] = count
    if limit:
        params["limit"] = limit
    chosen = chosen.model_copy(update={"params": params})
    target = get_cluster(cluster) if cluster else spec.cluster_for(chosen)
    assert spec.capacity_window is not None
    return target, chosen, spec.capacity_window, spec.capacity_warmup


def pool_of(cluster: ClusterSpec, workload: WorkloadSpec, seed: int) -> list[Workflow]:
    return build_spec(workload, seed, {}, cluster.cost_model().model.max_context)[0]


def alone_of(job: tuple[ClusterSpec, WorkloadSpec, int]) -> dict[str, float]:
    cluster, workload, seed = job
    return isolated_tcts(cluster, pool_of(cluster, workload, seed))


def timed_probe(job: ProbeJob) -> tuple[dict[int, SeedOutcome], float]:
    started = time.process_time()
    out = probe(job)
    return out, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help="a workload of the full capacity scenario")
    parser.add_argument("--cluster", default="", help="a cluster preset (default: the scenario's)")
    parser.add_argument("--count", default="", help="pool size of a registry generator")
    parser.add_argument("--limit", default="", help="pool size of a trace")
    parser.add_argument("--rates", default="0.02", help="comma-separated rates (workflows/s)")
    parser.add_argument("--policies", default="", help="comma-separated policies to probe")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    cluster, workload, window_tcts, warmup_tcts = setting(
        args.workload, args.cluster, args.count, args.limit)
    seeds = [int(s) for s in args.seeds.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    pools = {seed: pool_of(cluster, workload, seed) for seed in seeds}
    with ProcessPoolExecutor(2) as pool:
        alone = dict(zip(seeds, pool.map(alone_of, [(cluster, workload, s) for s in seeds]),
                         strict=True))
        median = median_alone(alone)
        window, warmup = window_tcts * median, warmup_tcts * median
        print(f"{workload.title} on {cluster.name} x{cluster.replicas}: pools "
              f"{[len(p) for p in pools.values()]}, median TCT alone {median:,.0f} s, "
              f"window {window:,.0f} s")
        jobs: list[tuple[str, float, bool, ProbeJob]] = []
        for rate in rates:
            offers = {seed: offered(pools[seed], rate, seed, window) for seed in seeds}
            print(f"  {rate:g} wf/s offers " + ", ".join(
                f"seed {s}: {len(kept)}{' (pool ran out)' if out else ''}"
                for s, (kept, out) in offers.items()))
            limited = any(out for _, out in offers.values())
            for policy in policies:
                jobs.append((policy, rate, limited, ProbeJob(
                    cluster, policy, [(s, kept) for s, (kept, _) in offers.items()], alone,
                    2.0, warmup, 0.9)))
        for (policy, rate, limited, _), (outcomes, cpu) in zip(
                jobs, pool.map(timed_probe, [j for *_, j in jobs]), strict=True):
            met = sum(o.met for o in outcomes.values())
            judged = sum(o.judged for o in outcomes.values())
            verdict = "served" if judged == 0 or met / judged >= 0.9 else "not served"
            seeds_text = ", ".join(f"seed {s} {o.state} {o.met}/{o.judged}"
                                   for s, o in outcomes.items())
            print(f"{policy} at {rate:g} wf/s: {verdict}{' (limited)' if limited else ''}, "
                  f"{met} of {judged} judged within 2x ({seeds_text}); {cpu:.1f} CPU s")


if __name__ == "__main__":
    main()
