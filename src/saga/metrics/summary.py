"""The metrics of a run (the keys of summary.json, README.md), each defined once, here.

Every figure is computed from a :class:`~saga.sim.simulator.SimResult` (or the
same records from the gateway), so the simulator and the live runtime report
the same things the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from saga.sim.simulator import SimResult, WorkflowRecord

SUMMARY_KEYS = (
    "tct_mean",
    "tct_p50",
    "tct_p99",
    "slowdown_mean",
    "prefix_hit_rate",
    "recomputed_tokens",
    "kv_utilization",
    "throughput_workflows_per_s",
    "workflows_completed",
)


def tct(record: WorkflowRecord) -> float:
    """Task completion time: end of the workflow's last call minus its arrival."""
    return record.finished_at - record.arrival


def slowdown(record: WorkflowRecord, isolated_tct: float) -> float:
    """TCT over the TCT of the same workflow alone on an idle replica (>= ~1)."""
    return tct(record) / isolated_tct if isolated_tct > 0 else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation), NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def prefix_hit_rate(result: SimResult) -> float:
    """Share of prompt tokens whose KV was found cached (GPU or host tier) when the
    call was first scheduled."""
    prompt = sum(c.prompt_tokens for c in result.calls)
    hit = sum(c.cached_tokens + c.host_tokens for c in result.calls)
    return hit / prompt if prompt else 0.0


def recomputed_tokens(result: SimResult) -> int:
    """Prompt tokens computed again although the workflow had computed them before:
    the part of each call's reusable prefix (what it shares with the calls it
    follows, output included) that was not found cached, plus what preemption
    made the engine compute twice."""
    return sum(c.recomputed_tokens for c in result.calls)


def gpu_missed_tokens(result: SimResult) -> int:
    """Tokens of reusable prefixes that were not on the GPU when their call was
    scheduled (then reloaded from the host tier or recomputed): the misses that GPU
    eviction and placement cause, the quantity Belady's bound minimizes."""
    return sum(c.gpu_missed_tokens for c in result.calls)


def host_loaded_tokens(result: SimResult) -> int:
    """Of :func:`gpu_missed_tokens`, those loaded from the host tier when their call was
    scheduled (the rest of the misses were recomputed). Prefetches that landed before the
    call are GPU hits, not counted here."""
    return sum(c.host_tokens for c in result.calls)


def placement_missed_tokens(result: SimResult) -> int:
    """Of :func:`gpu_missed_tokens`, those a placement gave up: the call ran on another
    replica than the one its predecessor left its prefix on, which still held them when
    the call was placed (a steal, a rebalance). The rest were evicted (or never cached)
    where the call ran: what an eviction order answers for."""
    return sum(c.placement_missed_tokens for c in result.calls)


def calls_over_context(result: SimResult) -> int:
    """Calls longer than the model's context (prompt plus output over its window): a real
    vLLM answers them 400, so they are never simulated and their workflows are rejected
    (counted in ``workflows_rejected``). A valid benchmark has none."""
    return sum(w.over_context for w in result.workflows)


def kv_utilization(result: SimResult) -> float:
    """Time-averaged share of KV capacity holding blocks that are either in use by a
    running call or hit again before they are evicted."""
    duration = result.end - result.start
    capacity = sum(r.capacity_blocks for r in result.replicas) * duration
    if capacity <= 0:
        return 0.0
    useful = sum(r.busy_block_seconds + r.reused_idle_block_seconds for r in result.replicas)
    return useful / capacity


def kv_useful_utilization(result: SimResult) -> float:
    """Block-seconds of blocks that serve a call without being recomputed, plus cached
    blocks hit again, over capacity: :func:`kv_utilization` less the waste, which is

    * blocks a running call holds while it recomputes KV that it (after a preemption) or
      its workflow (a prefix evicted between calls) had computed before, and
    * a call's blocks outside the prefix cache (prompt chunks not yet cached, output)
      held until a preemption discarded them: their KV must be computed again.

    Thrash (calls preempted and recomputed over and over) holds memory busy without
    progress; this measure does not count it."""
    duration = result.end - result.start
    capacity = sum(r.capacity_blocks for r in result.replicas) * duration
    if capacity <= 0:
        return 0.0
    useful = sum(
        r.busy_block_seconds - r.wasted_block_seconds + r.reused_idle_block_seconds
        for r in result.replicas
    )
    return useful / capacity


def busy_share(result: SimResult) -> float:
    """Share of replica-time with a batch stepping between the first and the last arrival
    (the offered load as the replicas felt it); NaN for a closed loop or one arrival."""
    low, high = result.arrival_window
    span = (high - low) * len(result.replicas)
    if span <= 0:
        return float("nan")
    return sum(r.window_busy_seconds for r in result.replicas) / span


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 is perfectly even."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return float("nan")
    denominator = len(xs) * sum(x * x for x in xs)
    return sum(xs) ** 2 / denominator if denominator else 1.0


def summarize(result: SimResult, isolated: Mapping[str, float]) -> dict[str, object]:
    """All run figures. The keys of SUMMARY_KEYS are the stable interface."""
    done = [w for w in result.workflows if w.finished_at >= 0]
    tcts = [tct(w) for w in done]
    slowdowns = {w.workflow: slowdown(w, isolated.get(w.workflow, 0.0)) for w in done}
    duration = max(result.end - result.start, 1e-9)
    ttft = [c.first_token_at - c.ready_at for c in result.calls]
    latency = [c.finished_at - c.ready_at for c in result.calls]
    output = sum(c.output_tokens for c in result.calls)
    per_tenant = tenant_slowdowns(done, slowdowns)
    tenant_means = list(per_tenant.values())
    summary: dict[str, object] = {
        "tct_mean": _mean(tcts),
        "tct_p50": percentile(tcts, 50),
        "tct_p99": percentile(tcts, 99),
        "slowdown_mean": _mean(list(slowdowns.values())),
        "slowdown_p99": percentile(list(slowdowns.values()), 99),
        "prefix_hit_rate": prefix_hit_rate(result),
        "recomputed_tokens": recomputed_tokens(result),
        "gpu_missed_tokens": gpu_missed_tokens(result),
        "placement_missed_tokens": placement_missed_tokens(result),
        "host_loaded_tokens": host_loaded_tokens(result),
        "kv_utilization": kv_utilization(result),
        "kv_useful_utilization": kv_useful_utilization(result),
        "busy_share": busy_share(result),
        "throughput_workflows_per_s": len(done) / duration,
        "throughput_output_tokens_per_s": output / duration,
        "workflows_completed": len(done),
        "workflows_rejected": sum(1 for w in result.workflows if w.rejected),
        "calls_over_context": calls_over_context(result),
        "workflows_total": len(result.workflows),
        "calls_completed": len(result.calls),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "call_latency_p50": percentile(latency, 50),
        "call_latency_p99": percentile(latency, 99),
        "slo_attainment": slo_attainment(result.workflows, slowdowns),
        "tenant_slowdown": per_tenant,
        "jain_index": jain_index(tenant_means),
        # Among the tenants with an SLO only: a best-effort tenant flooding far past its
        # share is meant to absorb the overload, so its slowdown is not a fairness miss.
        "jain_index_slo": jain_index(
            [per_tenant[t] for t in sorted({w.tenant for w in done if w.slo is not None})]
        ),
        "tenant_max_over_min": (max(tenant_means) / min(tenant_means))
        if tenant_means and min(tenant_means) > 0
        else float("nan"),
        "preemptions": sum(c.preemptions for c in result.calls),
        "evicted_blocks": sum(r.evicted_blocks for r in result.replicas),
        "simulated_seconds": result.end - result.start,
        "events": result.events,
    }
    return summary


def tenant_slowdowns(
    done: Sequence[WorkflowRecord], slowdowns: Mapping[str, float]
) -> dict[str, float]:
    """Mean slowdown per tenant."""
    by_tenant: dict[str, list[float]] = defaultdict(list)
    for w in done:
        by_tenant[w.tenant].append(slowdowns[w.workflow])
    return {t: _mean(v) for t, v in sorted(by_tenant.items())}


def slo_attainment(
    workflows: Sequence[WorkflowRecord], slowdowns: Mapping[str, float]
) -> float:
    """Share of workflows with an SLO (interactive tenants) whose slowdown met it.
    A rejected or unfinished interactive workflow counts as a miss. NaN if none."""
    with_slo = [w for w in workflows if w.slo is not None]
    if not with_slo:
        return float("nan")
    met = sum(
        1
        for w in with_slo
        if w.finished_at >= 0 and w.slo is not None and slowdowns.get(w.workflow, math.inf) <= w.slo
    )
    return met / len(with_slo)


def speedup(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    seed: int = 0,
    resamples: int = 2000,
) -> dict[str, float]:
    """Speedup of ``candidate`` over ``baseline``: geometric mean over paired
    workflows of TCT_baseline / TCT_candidate, a bootstrap 95 % interval, and the
    two-sided p-value of a paired sign-flip permutation test on the log ratios."""
    keys = sorted(set(baseline) & set(candidate))
    ratios = np.array(
        [math.log(baseline[k] / candidate[k]) for k in keys if baseline[k] > 0 and candidate[k] > 0]
    )
    if ratios.size == 0:
        nan = float("nan")
        return {"geomean": nan, "ci_low": nan, "ci_high": nan, "p": nan, "n": 0}
    rng = np.random.default_rng(seed)
    observed = float(ratios.mean())
    boot = rng.choice(ratios, size=(resamples, ratios.size), replace=True).mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, ratios.size))
    flipped = np.abs((signs * ratios).mean(axis=1))
    p = (1 + int(np.sum(flipped >= abs(observed) - 1e-15))) / (resamples + 1)
    return {
        "geomean": math.exp(observed),
        "ci_low": math.exp(float(low)),
        "ci_high": math.exp(float(high)),
        "p": p,
        "n": int(ratios.size),
    }


def speedup_ceiling(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    isolated: Mapping[str, float],
) -> float:
    """The largest speedup over ``baseline`` that any policy could show on these workflows.

    Geometric mean, over the workflows paired in ``speedup(baseline, candidate)``, of
    TCT_baseline / TCT_isolated: the speedup of a scheduler that gave every workflow the
    TCT it has alone on an idle replica. No scheduler beats that by more than the little a
    shared prefix warmed by another workflow saves, so when a baseline's slowdowns are small
    no policy can show a large speedup over it.
    """
    keys = sorted(set(baseline) & set(candidate) & set(isolated))
    logs = [
        math.log(baseline[k] / isolated[k]) for k in keys
        if baseline[k] > 0 and candidate[k] > 0 and isolated[k] > 0
    ]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def _mean(values: Sequence[float]) -> float:
    xs = [v for v in values if not math.isnan(v)]
    return sum(xs) / len(xs) if xs else float("nan")
