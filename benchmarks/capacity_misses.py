"""Where the workflows that miss 2x near a policy's goodput capacity lose their time.

One probe of the quick `capacity` scenario (as benchmarks/capacity_probe.py: the same pool,
re-timing, window and warm-up; `full:coding` for the full scenario's), one seed or several
pooled. The workflows judged that the FIRST policy runs
past 2x their TCT alone are followed under every policy named, and each one's time over
its TCT alone is split, summed over its calls, into: the wait at the door (memory gate),
the wait in an engine queue, prefill over its prefill alone (prefix misses: recompute of
evicted or stolen context, and prefill chunks slowed by a busy batch), decode over its
decode alone (larger batches), and the rest (tool gaps, which no policy changes, and
rounding). Also per workflow: recomputed tokens; the tokens the placement gave up (the
replica of the previous call still held them: steals; counted before any reload from the
host tier, so they may exceed the recompute); the recompute its preemptions caused (what a
preemption discarded and was computed again; the rest of the recompute is prefix missed on
the GPU between calls and not found on the host: evicted, or dropped at a guessed end);
the tokens reloaded from the host tier; steals (a call placed on another replica than its
predecessor's); preemptions.

Run: PYTHONPATH=src python benchmarks/capacity_misses.py coding 0.025 \
    saga:gate_shared_once=false,saga,sglang+gate:gate_shared_once=false [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

from capacity_probe import (
    policy_list,
    policy_named,
    pool_of,
    seed_list,
    workload,
    workload_label,
)
from saga.bench.capacity import median_alone, offered
from saga.sched.vllm import VLLMRoundRobin
from saga.sim.simulator import SimResult, Simulation

#: the parts of a workflow's time over its TCT alone, in the order printed
PARTS = ("gate wait", "queue", "prefill over alone", "decode over alone", "rest")
COUNTS = ("recomputed tok", "of which placement", "of which preemption", "host reloaded tok",
          "steals", "preemptions")
#: counts small enough per workflow that their means are printed with two decimals
FEW = ("steals", "preemptions")


def alone_parts(job: tuple[str, int]) -> dict[str, tuple[float, float, float]]:
    """Each workflow alone on an idle replica: TCT, prefill seconds, decode seconds."""
    label, seed = job
    cluster = workload(label)[0].model_copy(update={"replicas": 1})
    out = {}
    for w in pool_of(label, seed):
        result = Simulation(cluster, VLLMRoundRobin(), [w.with_arrival(0.0)]).run()
        record = result.workflows[0]
        out[w.id] = (
            record.finished_at - record.arrival,
            sum(c.first_token_at - c.scheduled_at for c in result.calls),
            sum(c.finished_at - c.first_token_at for c in result.calls),
        )
    return out


def run(job: tuple[str, str, int, float, float]) -> SimResult:
    label, policy, seed, rate, median = job
    cluster, _, window, _ = workload(label)
    kept, _ = offered(pool_of(label, seed), rate, seed, window * median)
    return Simulation(cluster, policy_named(policy), kept, seed=seed).run()


def breakdown(result: SimResult, alone: dict[str, tuple[float, float, float]]
              ) -> dict[str, dict[str, float]]:
    """Per workflow: slowdown, the parts of its time over alone, and the counts."""
    calls = defaultdict(list)
    for c in result.calls:
        calls[c.workflow].append(c)
    out = {}
    for w in result.workflows:
        tct_alone, prefill_alone, decode_alone = alone[w.workflow]
        mine = sorted(calls[w.workflow], key=lambda c: c.ready_at)
        finished = w.finished_at >= 0 and not w.rejected
        tct = (w.finished_at if finished else result.end) - w.arrival
        parts = {
            "gate wait": w.started_at - w.arrival,
            "queue": sum(c.scheduled_at - c.ready_at for c in mine),
            "prefill over alone": sum(c.first_token_at - c.scheduled_at for c in mine)
            - prefill_alone,
            "decode over alone": sum(c.finished_at - c.first_token_at for c in mine)
            - decode_alone,
        }
        parts["rest"] = tct - tct_alone - sum(parts.values())
        parts["slowdown"] = tct / tct_alone if finished else float("inf")
        parts["recomputed tok"] = sum(c.recomputed_tokens for c in mine)
        parts["of which placement"] = sum(c.placement_missed_tokens for c in mine)
        # a call's recompute is its prefix missed on the GPU and not reloaded from the host,
        # plus what its preemptions discarded: the second part is the rest
        parts["of which preemption"] = sum(
            c.recomputed_tokens - max(0, c.gpu_missed_tokens - c.host_tokens) for c in mine)
        parts["host reloaded tok"] = sum(c.host_tokens for c in mine)
        parts["steals"] = sum(1 for a, b in itertools.pairwise(mine)
                              if a.replica != b.replica)
        parts["preemptions"] = sum(c.preemptions for c in mine)
        parts["arrival"] = w.arrival
        out[w.workflow] = parts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", type=workload_label,
                        help="a quick capacity workload: coding or claude-code "
                        "(full:coding, full:claude-code: the full scenario's)")
    parser.add_argument("rate", type=float, help="Poisson arrival rate (workflows/s)")
    parser.add_argument("policies", type=policy_list,
                        help="comma-separated; the first picks the workflows")
    parser.add_argument("--seeds", type=seed_list, default=[0],
                        help="comma-separated; several pool their workflows (window: the "
                        "median TCT alone over all of them, as the search's)")
    args = parser.parse_args()
    policies: list[str] = args.policies
    seeds: list[int] = args.seeds
    with ProcessPoolExecutor(2) as pool:
        alone = dict(zip(seeds, pool.map(alone_parts, [(args.workload, s) for s in seeds]),
                         strict=True))
        median = median_alone({s: {k: v[0] for k, v in a.items()} for s, a in alone.items()})
        jobs = [(args.workload, p, s, args.rate, median) for p in policies for s in seeds]
        results = list(pool.map(run, jobs))
    warmup = workload(args.workload)[3] * median
    # one table per policy over every seed's workflows (ids are per seed: keyed by both)
    tables = [
        {(s, w): row for s, r in zip(seeds, results[i * len(seeds):(i + 1) * len(seeds)],
                                     strict=True)
         for w, row in breakdown(r, alone[s]).items()}
        for i in range(len(policies))
    ]
    judged = [w for w, row in tables[0].items() if row["arrival"] >= warmup]
    missed = [w for w in judged if tables[0][w]["slowdown"] > 2.0]
    print(f"{args.workload} at {args.rate:g} wf/s, seeds {seeds}: {len(missed)} of "
          f"{len(judged)} judged workflows past 2x under {policies[0]}; their mean per "
          "workflow (seconds over their TCT alone, then counts):")
    print("policy | within 2x (all judged) | within 2x (these) | "
          + " | ".join(PARTS + COUNTS))
    for name, table in zip(policies, tables, strict=True):
        rows = [table[w] for w in missed if w in table]
        n = max(len(rows), 1)
        within = sum(1 for r in rows if r["slowdown"] <= 2.0)
        everyone = sum(1 for w in judged if w in table and table[w]["slowdown"] <= 2.0)
        print(f"{name} | {everyone / max(len(judged), 1):.3f} | {within}/{len(rows)} | "
              + " | ".join(f"{sum(r[k] for r in rows) / n:,.{2 if k in FEW else 0}f}"
                           for k in PARTS + COUNTS))

if __name__ == "__main__":
    main()
