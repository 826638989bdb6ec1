"""Where a policy loses near its goodput capacity: one probe of the capacity search, read closely.

Runs policies at one Poisson rate on a workload of the quick `capacity` scenario, exactly as
the search probes it (the same pool, re-timing, window of 8 median TCTs alone and warm-up;
:func:`saga.bench.capacity.offered`), seeds pooled, and prints per policy: the share of
judged workflows within 2x their TCT alone, slowdown p50 / p90, the mean wait at the door
(memory gate), per call the mean queueing, prefill and decode seconds, the prefix hit rate,
recomputed tokens, preemptions and the coefficient of variation of the replicas' busy time;
then the busy share (replica-time stepping a batch within the arrival window), the output
tokens per engine step (the decode batch) and the mean step time, and the share per seed.

A policy is a registry name, or `saga:FIELD=JSON;FIELD=JSON` for SAGA with those
`SagaConfig` fields (e.g. `saga:steal_imposed=false`), or `NAME+gate:FIELD=JSON` for a
baseline behind SAGA's gate with those fields (e.g. `sglang+gate:gate_shared_once=false`),
or `NAME+guard:decode_guard_share=X;decode_guard_decodes=N` for a baseline with the decode
guard of that SAGA configuration (e.g. `infercept+guard:decode_guard_share=0.03125`),
or `llm-d:FIELD=JSON` for llm-d with those `LLMDConfig` fields (e.g.
`llm-d:max_prefix_blocks=8192`). A workload `full:coding` or `full:claude-code` is the full
scenario's instead of the quick one's. `--kv-scale 8` runs a copy of the cluster with 8x
its GPU KV blocks, where memory never binds: the offline no-recompute ceiling of
docs/saga.md ("Goodput capacity"), not a deployable configuration.

Run: PYTHONPATH=src python benchmarks/capacity_probe.py coding 0.02 \
    saga,saga-no-steal,sglang,vllm-affinity [--seeds 0,1] [--kv-scale 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from pydantic import ValidationError

from saga.bench.capacity import median_alone, offered
from saga.bench.scenario import WorkloadSpec, load_scenario
from saga.bench.workloads import build_spec
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec
from saga.errors import UserError, validation_reasons
from saga.metrics.summary import busy_share
from saga.sched.baselines.llmd import LLMD, LLMDConfig
from saga.sched.gated import GatedPolicy
from saga.sched.guarded import SUFFIX as GUARDED
from saga.sched.guarded import GuardedPolicy
from saga.sched.policy import Policy
from saga.sched.registry import build_policy
from saga.sched.saga.chunking import GuardRule
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import GraphStore
from saga.sched.saga.policy import SagaPolicy
from saga.sim.run import isolated_tcts
from saga.sim.simulator import Simulation


def policy_named(name: str) -> Policy:
    """A registry policy, `saga:FIELD=JSON;...` for SAGA with those config fields,
    `BASE+guard:FIELD=JSON;...` for a baseline with the decode guard of that SAGA
    configuration, or `BASE+gate:FIELD=JSON;...` for a baseline behind a gate of it."""
    if ":" not in name:
        return build_policy(name)
    base, _, spec = name.partition(":")
    fields = dict(part.split("=", 1) for part in spec.split(";"))
    if base == "llm-d":  # llm-d's own knobs (e.g. max_prefix_blocks, flow_control)
        return LLMD(LLMDConfig(**{k: json.loads(v) for k, v in fields.items()}))
    config = SagaConfig(**{k: json.loads(v) for k, v in fields.items()})
    if base == "saga":
        return SagaPolicy(config)
    if base.endswith(GUARDED):  # the guard of that SAGA configuration, as SAGA's own
        guarded = build_policy(base)
        if not isinstance(guarded, GuardedPolicy):
            raise ValueError(f"{base}: not a +guard policy")
        guarded.guard = GuardRule.of(config)
        return guarded
    wrapped = build_policy(base)
    if not isinstance(wrapped, GatedPolicy):
        raise ValueError(f"{base}: only saga and NAME+gate take a configuration")
    wrapped.config = config  # before bind: the gate and its graph are built from it
    wrapped.graphs = GraphStore(config)
    return wrapped


def guard_example() -> str:
    """``NAME+guard:`` with every SagaConfig field the guard takes, at its default: the
    fields :meth:`GuardRule.of` reads, ``decode_guard_`` and a :class:`GuardRule` field."""
    defaults = SagaConfig()
    names = [f"decode_guard_{field.name}" for field in dataclasses.fields(GuardRule)]
    return "NAME+guard:" + ";".join(f"{name}={json.dumps(getattr(defaults, name))}"
                                    for name in names)


POLICY_FORMS = f"""policies:
  NAME                       a registry policy (saga, sglang, vllm-affinity, ...)
  saga:FIELD=JSON;...        SAGA with those SagaConfig fields, e.g. saga:steal_imposed=false
  NAME+gate:FIELD=JSON;...   a baseline behind SAGA's gate of that configuration
  NAME+guard:FIELD=JSON;...  a baseline with the decode guard of that configuration; the
                             guard's fields (here at their defaults):
    {guard_example()}
  llm-d:FIELD=JSON;...       llm-d with those LLMDConfig fields"""


@dataclass
class Probe:
    slowdowns: list[float]  # judged workflows (inf: unfinished)
    gate_waits: list[float]
    calls: int
    queue: float
    prefill: float
    decode: float
    prompt: int
    cached: int
    recomputed: int
    preemptions: int
    busy: list[float]
    busy_share: float  # replica-time stepping a batch within the arrival window
    steps: int
    output_tokens: int
    #: SAGA only: calls placed away from their workflow's home, and the spread of its
    #: completion predictions (steal_noise.py; None for other policies)
    steals: int | None = None
    sigma: float | None = None


def workload(label: str) -> tuple[ClusterSpec, WorkloadSpec, float, float]:
    """The quick capacity scenario's workload ``label`` (``full:LABEL``: the full
    scenario's): cluster, spec, window, warm-up (in median TCTs alone)."""
    full, _, name = label.rpartition(":")
    spec = load_scenario("capacity")
    if full != "full":
        spec = spec.quick_version()
    chosen = next((w for w in spec.workloads if name in (w.label, w.name)), None)
    if chosen is None or full not in ("", "full"):
        names = ", ".join(w.label or w.name for w in spec.workloads)
        raise argparse.ArgumentTypeError(
            f"unknown workload {label!r}: one of {names}, or full:NAME")
    return spec.cluster_for(chosen), chosen, spec.capacity_window, spec.capacity_warmup


def workload_label(text: str) -> str:
    """An argparse type: ``text`` if it names a capacity workload (checked before any
    simulation starts), else a usage error."""
    workload(text)
    return text


def seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated non-negative seeds."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be integers >= 0 like 0,1, not {text!r}")
    return seeds


def policy_list(text: str) -> list[str]:
    """An argparse type: comma-separated policy names, each built once here (an unknown
    name or an invalid configuration is a usage error before any simulation starts)."""
    names = text.split(",")
    for name in names:
        try:
            policy_named(name)
        except ValidationError as error:
            raise argparse.ArgumentTypeError(f"{name}: {validation_reasons(error)}") from None
        except (UserError, ValueError) as error:
            raise argparse.ArgumentTypeError(f"{name}: {error}") from None
    return names


def pool_of(label: str, seed: int) -> list[Workflow]:
    cluster, spec, _, _ = workload(label)
    return build_spec(spec, seed, {}, cluster.cost_model().model.max_context)[0]


def alone_of(job: tuple[str, int]) -> dict[str, float]:
    """Each workflow's TCT alone on an idle replica (the real cluster's, also for a ceiling)."""
    label, seed = job
    return isolated_tcts(workload(label)[0], pool_of(label, seed))


def run(job: tuple[str, str, int, float, float, float, dict[str, float]]) -> Probe:
    label, policy, seed, rate, kv_scale, median, alone = job
    cluster, _, window, warmup = workload(label)
    pool = pool_of(label, seed)
    if kv_scale != 1.0:
        blocks = int(cluster.kv_capacity_blocks(pool[0].block_tokens) * kv_scale)
        engine = cluster.engine.model_copy(update={"kv_capacity_blocks": blocks})
        cluster = cluster.model_copy(update={"engine": engine})
    kept, _ = offered(pool, rate, seed, window * median)
    chosen = policy_named(policy)
    result = Simulation(cluster, chosen, kept, seed=seed).run()
    # getattr: the script also runs against older trees (a BASE), whose SagaPolicy has none
    noise = getattr(chosen, "noise", None)
    judged = [w for w in result.workflows if w.arrival >= warmup * median]
    calls = result.calls
    return Probe(
        [
            (w.finished_at - w.arrival) / alone[w.workflow]
            if w.finished_at >= 0 and not w.rejected else math.inf
            for w in judged
        ],
        [w.started_at - w.arrival for w in judged],
        len(calls),
        sum(c.scheduled_at - c.ready_at for c in calls),
        sum(c.first_token_at - c.scheduled_at for c in calls),
        sum(c.finished_at - c.first_token_at for c in calls),
        sum(c.prompt_tokens for c in calls),
        sum(c.cached_tokens for c in calls),
        sum(c.recomputed_tokens for c in calls),
        sum(c.preemptions for c in calls),
        [r.busy_seconds for r in result.replicas],
        busy_share(result),
        sum(r.steps for r in result.replicas),
        sum(r.output_tokens for r in result.replicas),
        chosen.steals if isinstance(chosen, SagaPolicy) else None,
        math.sqrt(noise.var) if noise is not None and noise.count > 1 else None,
    )


def main() -> None:
    # raw: the examples stay whole lines (argparse would break a long one mid-name)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=POLICY_FORMS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", type=workload_label,
                        help="a quick capacity workload: coding or claude-code "
                        "(full:coding, full:claude-code: the full scenario's)")
    parser.add_argument("rate", type=float, help="Poisson arrival rate (workflows/s)")
    parser.add_argument("policies", type=policy_list,
                        help="comma-separated policies, each of a form below")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1],
                        help="comma-separated seeds, pooled (default 0,1)")
    parser.add_argument("--kv-scale", type=float, default=1.0,
                        help="GPU KV blocks times this (offline ceiling when large)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds: list[int] = args.seeds
    policies: list[str] = args.policies
    with ProcessPoolExecutor(args.workers) as pool:
        alone = dict(zip(seeds, pool.map(alone_of, [(args.workload, s) for s in seeds]),
                         strict=True))
        median = median_alone(alone)
        jobs = [(args.workload, p, s, args.rate, args.kv_scale, median, alone[s])
                for p in policies for s in seeds]
        probes = list(pool.map(run, jobs))
    print(f"{args.workload} at {args.rate:g} wf/s, seeds {seeds}, KV x{args.kv_scale:g}")
    print("policy | within 2x | slowdown p50 / p90 | gate wait (s) | queue / prefill / decode "
          "per call (s) | hit | recomputed (M) | preemptions | busy CV")
    for i, name in enumerate(policies):
        mine = probes[i * len(seeds):(i + 1) * len(seeds)]
        slow = sorted(x for p in mine for x in p.slowdowns)
        n, calls = len(slow), sum(p.calls for p in mine)
        busy = [b for p in mine for b in p.busy]
        print(
            f"{name} | {sum(1 for x in slow if x <= 2.0) / n:.3f} | "
            f"{slow[n // 2]:.2f} / {slow[int(n * 0.9)]:.2f} | "
            f"{statistics.mean(g for p in mine for g in p.gate_waits):.1f} | "
            f"{sum(p.queue for p in mine) / calls:.2f} / {sum(p.prefill for p in mine) / calls:.2f}"
            f" / {sum(p.decode for p in mine) / calls:.2f} | "
            f"{sum(p.cached for p in mine) / max(sum(p.prompt for p in mine), 1):.3f} | "
            f"{sum(p.recomputed for p in mine) / 1e6:.2f} | {sum(p.preemptions for p in mine)} | "
            f"{statistics.pstdev(busy) / statistics.mean(busy):.3f} ({n} judged)"
        )
        steps = sum(p.steps for p in mine)
        print(f"  {name}: busy share {statistics.mean(p.busy_share for p in mine):.3f}, "
              f"{sum(p.output_tokens for p in mine) / steps:.2f} output tokens per step, "
              f"{sum(busy) / steps * 1e3:.1f} ms per step; within 2x per seed "
              + ", ".join(f"{sum(1 for x in p.slowdowns if x <= 2.0) / len(p.slowdowns):.3f}"
                          for p in mine))
        if all(p.steals is not None and p.sigma is not None for p in mine):
            print(f"  {name}: steals per seed " + ", ".join(str(p.steals) for p in mine)
                  + "; prediction spread (sd of log actual / predicted) per seed "
                  + ", ".join(f"{p.sigma:.3f}" for p in mine))


if __name__ == "__main__":
    main()
