"""Run a scenario: every policy on the same workflows and seeds, in parallel processes."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

from saga.bench.capacity import CapacityCase, measure_capacities
from saga.bench.scenario import Scenario, WorkloadSpec
from saga.bench.workloads import build_spec
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec
from saga.metrics.summary import speedup, speedup_ceiling
from saga.sim.run import isolated_tcts, run_policy
from saga.workloads.registry import describe

Progress = Callable[[str], None]


@dataclass
class PolicyRun:
    """What one policy did on one case (small enough to pass between processes)."""

    policy: str
    summary: dict[str, object]
    tcts: dict[str, float]
    kv_timeline: list[tuple[float, float]]
    wall_seconds: float
    graph: dict[str, object] | None = None


@dataclass
class CaseResult:
    """One workload at one load and seed, served by every policy."""

    name: str
    workload: str
    seed: int
    replicas: int
    load: float | None = None
    rate: float | None = None
    runs: dict[str, PolicyRun] = field(default_factory=dict)
    isolated: dict[str, float] = field(default_factory=dict)  # workflow -> TCT alone
    speedup: dict[str, dict[str, float]] = field(default_factory=dict)
    # the first of each policy's bounds (the headline's): its ratio and its name
    eviction_vs_belady: dict[str, float] = field(default_factory=dict)
    eviction_bound: dict[str, str] = field(default_factory=dict)  # policy -> its bound
    # policy -> bound -> GPU prefix misses over the bound's, every bound in order
    eviction_vs_bounds: dict[str, dict[str, float]] = field(default_factory=dict)
    cluster: str = ""
    params: dict[str, str] = field(default_factory=dict)  # the workload's own, as given


@dataclass
class SweepPoint:
    policy: str
    concurrency: int
    throughput: float
    tct_mean: float
    tct_p99: float
    kv_utilization: float = float("nan")
    calls_over_context: int = 0
    kv_useful_utilization: float = float("nan")


@dataclass
class BenchResult:
    scenario: Scenario
    quick: bool
    cases: list[CaseResult] = field(default_factory=list)
    sweep: list[SweepPoint] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)
    capacity: list[CapacityCase] = field(default_factory=list)
    wall_seconds: float = 0.0


# ---- jobs run in worker processes -------------------------------------------------------
def _run_job(
    job: tuple[ClusterSpec, str, list[Workflow], int, int | None, dict[str, float], float],
) -> PolicyRun:
    cluster, policy, workflows, seed, closed_loop, isolated, kv_interval = job
    started = time.perf_counter()
    out = run_policy(
        cluster,
        policy,
        workflows,
        seed=seed,
        closed_loop=closed_loop,
        isolated_cache=dict(isolated),
        kv_sample_interval=kv_interval,
    )
    wall = time.perf_counter() - started
    done = [w for w in out.result.workflows if w.finished_at >= 0]
    tcts = {w.workflow: w.finished_at - w.arrival for w in done}
    return PolicyRun(policy, out.summary, tcts, out.result.kv_timeline, wall, out.graph)


def _isolated_job(job: tuple[ClusterSpec, list[Workflow]]) -> dict[str, float]:
    cluster, workflows = job
    return isolated_tcts(cluster, workflows)


def _executor() -> Executor:
    workers = max(1, min(2, os.cpu_count() or 1))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


# ---- the scenario kinds -------------------------------------------------------------------
def run_scenario(
    scenario: Scenario, *, quick: bool, progress: Progress | None = None
) -> BenchResult:
    """Run every case of ``scenario`` (its quick version if ``quick``)."""
    spec = scenario.quick_version() if quick else scenario
    say = progress or (lambda _: None)
    result = BenchResult(spec, quick)
    started = time.perf_counter()
    with _executor() as pool:
        if spec.kind == "saturation":
            _run_saturation(spec, pool, result, say)
        elif spec.kind == "scale":
            _run_scale(spec, pool, result, say)
        elif spec.kind == "capacity":
            result.capacity.extend(measure_capacities(spec, spec.workloads, pool, say))
        else:
            _run_compare(spec, pool, result, say)
    result.wall_seconds = time.perf_counter() - started
    return result


def _run_compare(spec: Scenario, pool: Executor, result: BenchResult, say: Progress) -> None:
    for workload in spec.workloads:
        cluster = spec.cluster_for(workload)
        for seed in spec.seeds:
            if spec.loads is None:
                case = CaseResult(
                    workload.title, workload.name or workload.trace or "", seed,
                    cluster.replicas, rate=own_rate(workload), params=workload.string_params(),
                )
                workflows, closed = _build(cluster, workload, seed, {})
                _run_case(spec, cluster, case, workflows, closed, pool, say)
                result.cases.append(case)
                continue
            peak = _peak_rate(spec, cluster, workload, seed, pool, result, say)
            for load in spec.loads:
                rate = load * peak
                case = CaseResult(
                    f"{workload.title}@{round(100 * load)}%",
                    workload.name or workload.trace or "",
                    seed,
                    cluster.replicas,
                    load,
                    rate,
                    params=workload.string_params(),
                )
                workflows, closed = _build(cluster, workload, seed, {"rate": f"{rate:.6g}"})
                _run_case(spec, cluster, case, workflows, closed, pool, say)
                result.cases.append(case)


def _run_scale(spec: Scenario, pool: Executor, result: BenchResult, say: Progress) -> None:
    base = spec.cluster_for()
    for workload in spec.workloads:
        base_rate = float(workload.rate or workload.params.get("rate", 0.2))
        for replicas in spec.replicas:
            cluster = base.model_copy(update={"replicas": replicas})
            rate = base_rate * replicas / base.replicas
            seed = spec.seeds[0]
            case = CaseResult(
                f"{workload.title}x{replicas * base.tp}gpu",
                workload.name,
                seed,
                replicas,
                rate=rate,
                params=workload.string_params(),
            )
            workflows, closed = _build(cluster, workload, seed, {"rate": f"{rate:.6g}"})
            _run_case(spec, cluster, case, workflows, closed, pool, say)
            result.cases.append(case)


def _run_saturation(spec: Scenario, pool: Executor, result: BenchResult, say: Progress) -> None:
    cluster = spec.cluster_for()
    workload = spec.workloads[0]
    seed = spec.seeds[0]
    sweeps = _sweeps(spec, cluster, workload, seed, spec.policies, pool, say)
    for policy in spec.policies:  # in the scenario's order, whatever order they finished in
        result.sweep.extend(sweeps[policy])
        result.peaks[policy] = max(p.throughput for p in sweeps[policy])


def _peak_rate(
    spec: Scenario,
    cluster: ClusterSpec,
    workload: WorkloadSpec,
    seed: int,
    pool: Executor,
    result: BenchResult,
    say: Progress,
) -> float:
    """Peak completed workflows/s of the peak policy: the rate that load 1.0 means."""
    key = f"{workload.title}/{seed}"
    if key not in result.peaks:
        points = _sweeps(spec, cluster, workload, seed, [spec.peak_policy], pool, say)[
            spec.peak_policy]
        result.sweep.extend(points)
        result.peaks[key] = max(p.throughput for p in points)
    return result.peaks[key]


#: A policy's sweep as a plan: it yields the concurrencies to run next, is sent their
#: points, and returns every point once it is done.
SweepPlan = Generator[list[int], list[SweepPoint], list[SweepPoint]]


def _sweep_plan(levels: list[int]) -> SweepPlan:
    """Closed-loop runs with more and more workflows in flight (``levels``), two at a time,
    until throughput stops rising by 2 % or the levels end; then one round of refinement
    between the best point and the next, where the peak lies."""
    points: list[SweepPoint] = []
    best = 0.0
    while levels:
        batch, levels = levels[:2], levels[2:]
        points += yield batch
        top = max((p.throughput for p in points if math.isfinite(p.throughput)), default=0.0)
        last = points[-1].throughput
        # stop once throughput no longer rises, or is already falling past the peak
        if top < best * 1.02 or (math.isfinite(last) and last < 0.98 * top):
            break
        best = top
    points.sort(key=lambda p: p.concurrency)
    finite = [p for p in points if math.isfinite(p.throughput)]
    if finite:
        peak = max(finite, key=lambda p: p.throughput)
        above = [p.concurrency for p in points if p.concurrency > peak.concurrency]
        if above:
            lo, hi = peak.concurrency, min(above)
            ratio = hi / lo
            middle = sorted({round(lo * ratio ** (1 / 3)), round(lo * ratio ** (2 / 3))} - {lo, hi})
            if middle:
                points += yield middle
                points.sort(key=lambda p: p.concurrency)
    return points


def _sweeps(
    spec: Scenario,
    cluster: ClusterSpec,
    workload: WorkloadSpec,
    seed: int,
    policies: Sequence[str],
    pool: Executor,
    say: Progress,
) -> dict[str, list[SweepPoint]]:
    """Every policy's sweep (:func:`_sweep_plan`), all of them sharing the pool at once: a
    policy's next batch is submitted as soon as its last one is in, so no core waits for
    one policy's lone run. Each plan sees only its own points: the same as run alone."""
    levels = [per_replica * cluster.replicas for per_replica in spec.sweep]
    plans = {policy: _sweep_plan(list(levels)) for policy in policies}
    running: dict[Future[PolicyRun], tuple[str, int]] = {}
    batches: dict[str, dict[int, PolicyRun | None]] = {}
    out: dict[str, list[SweepPoint]] = {}

    def submit(policy: str, concurrencies: list[int]) -> None:
        say(f"saturation sweep of {policy} on {workload.title}: {concurrencies} in flight")
        batches[policy] = dict.fromkeys(concurrencies)
        for concurrency in concurrencies:
            job = _sweep_job(spec, cluster, workload, seed, policy, concurrency)
            running[pool.submit(_run_job, job)] = (policy, concurrency)

    for policy, plan in plans.items():
        submit(policy, next(plan))
    while running:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            policy, concurrency = running.pop(future)
            batch = batches[policy]
            batch[concurrency] = future.result()
            if any(run is None for run in batch.values()):
                continue
            points = [_sweep_point(policy, c, run) for c, run in batch.items() if run is not None]
            try:
                submit(policy, plans[policy].send(points))
            except StopIteration as finished:
                out[policy] = finished.value
    return out


def _sweep_job(
    spec: Scenario, cluster: ClusterSpec, workload: WorkloadSpec, seed: int, policy: str,
    concurrency: int,
) -> tuple[ClusterSpec, str, list[Workflow], int, int | None, dict[str, float], float]:
    workflows, _ = _build(cluster, workload, seed, _closed_params(workload, concurrency, spec))
    # slowdowns are not needed for a sweep: skip the isolated runs
    skip = {w.id: 1.0 for w in workflows}
    return (cluster, policy, workflows, seed, concurrency, skip, 0.0)


def _sweep_point(policy: str, concurrency: int, run: PolicyRun) -> SweepPoint:
    return SweepPoint(
        policy,
        concurrency,
        steady_throughput(concurrency, list(run.tcts.values())),
        float(run.summary["tct_mean"]),  # type: ignore[arg-type]
        float(run.summary["tct_p99"]),  # type: ignore[arg-type]
        float(run.summary["kv_utilization"]),  # type: ignore[arg-type]
        int(run.summary["calls_over_context"]),  # type: ignore[call-overload]
        float(run.summary["kv_useful_utilization"]),  # type: ignore[arg-type]
    )


def steady_throughput(concurrency: int, tcts: Sequence[float]) -> float:
    """Completed workflows per second of a closed loop, by Little's law: workflows in
    flight over their mean TCT. Unlike completions over the makespan it is not biased
    by the loop's synchronized start or its drain."""
    if not tcts:
        return float("nan")
    mean = sum(tcts) / len(tcts)
    return concurrency / mean if mean > 0 else float("nan")


def _closed_params(workload: WorkloadSpec, concurrency: int, spec: Scenario) -> dict[str, str]:
    params = {"concurrency": str(concurrency)}
    count = max(spec.sweep_workflows * concurrency, 24)
    if workload.trace is not None:
        return {**params, "count": str(count)}
    _, model = describe(workload.name)
    fields = model.model_fields
    if "count" in fields:
        params["count"] = str(count)
        if "duration" in fields:
            params["duration"] = "none"
    elif "limit" in fields:
        params["limit"] = str(count)
    return params


def _build(
    cluster: ClusterSpec, workload: WorkloadSpec, seed: int, overrides: dict[str, str]
) -> tuple[list[Workflow], int | None]:
    # readers and generators that model their client's context management use the
    # model's window
    return build_spec(workload, seed, overrides, cluster.cost_model().model.max_context)


def _run_case(
    spec: Scenario,
    cluster: ClusterSpec,
    case: CaseResult,
    workflows: list[Workflow],
    closed: int | None,
    pool: Executor,
    say: Progress,
) -> None:
    case.cluster = cluster.name
    say(
        f"{case.name} (seed {case.seed}): {len(workflows)} workflows on {cluster.name}"
        f" x{cluster.replicas}: isolated TCTs"
    )
    isolated: dict[str, float] = {}
    half = (len(workflows) + 1) // 2
    for part in pool.map(_isolated_job, [(cluster, workflows[:half]), (cluster, workflows[half:])]):
        isolated.update(part)
    case.isolated = isolated
    interval = spec.kv_sample_interval or _auto_interval(workflows)
    jobs = [(cluster, p, workflows, case.seed, closed, isolated, interval) for p in spec.policies]
    say(f"{case.name}: running {len(jobs)} policies")
    for run in pool.map(_run_job, jobs):
        case.runs[run.policy] = run
        say(f"{case.name}: {run.policy} done in {run.wall_seconds:.1f} s")
    reference = case.runs[spec.reference]
    for name, run in case.runs.items():
        if name != spec.reference:
            case.speedup[f"{spec.reference}/{name}"] = {
                **speedup(run.tcts, reference.tcts, seed=case.seed),
                "ceiling": speedup_ceiling(run.tcts, reference.tcts, isolated),
            }
    missed = {
        name: float(run.summary["gpu_missed_tokens"])  # type: ignore[arg-type]
        for name, run in case.runs.items()
    }
    case.eviction_vs_bounds = eviction_ratios(missed, spec.eviction_bounds)
    for name, ratios in case.eviction_vs_bounds.items():
        first = next(iter(ratios))
        case.eviction_bound[name], case.eviction_vs_belady[name] = first, ratios[first]


def eviction_ratios(
    missed: Mapping[str, float], bounds: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Each policy's GPU prefix misses over those of each of its offline bounds, in the
    order given. A policy's bounds are ``bounds[policy]``, else ``belady``; bounds that were
    not run are left out, and so is a policy with none run. No miss over no miss is 1x;
    some over none is infinite."""
    out: dict[str, dict[str, float]] = {}
    for name, mine in missed.items():
        ratios = {
            bound_name: mine / bound if bound > 0 else (1.0 if mine == 0 else math.inf)
            for bound_name in bounds.get(name, ("belady",))
            if (bound := missed.get(bound_name)) is not None
        }
        if ratios:
            out[name] = ratios
    return out


def planned_runs(scenario: Scenario) -> int | None:
    """Policy runs a scenario's cases will make (None when sweeps decide it)."""
    if scenario.kind in ("saturation", "capacity"):
        return None
    if scenario.kind == "scale":
        cases = len(scenario.workloads) * len(scenario.replicas)
    else:
        cases = len(scenario.workloads) * len(scenario.seeds) * len(scenario.loads or [1.0])
    return cases * len(scenario.policies)


def own_rate(workload: WorkloadSpec) -> float | None:
    """The arrival rate a workload states (params ``rate``, or a trace's ``rate``)."""
    if workload.rate is not None:
        return workload.rate
    if "concurrency" in workload.params:  # a closed loop: no arrival rate
        return None
    value = workload.params.get("rate")
    return float(value) if value is not None else None


def _auto_interval(workflows: Sequence[Workflow]) -> float:
    span = max(w.arrival for w in workflows) - min(w.arrival for w in workflows)
    return max(1.0, span / 200)


def pooled_speedups(result: BenchResult) -> dict[str, dict[str, float]]:
    """Speedup of the reference over each policy, over the paired workflows of every case."""
    reference = result.scenario.reference
    out: dict[str, dict[str, float]] = {}
    for policy in result.scenario.policies:
        if policy == reference:
            continue
        base: dict[str, float] = {}
        mine: dict[str, float] = {}
        alone: dict[str, float] = {}
        for case in result.cases:
            if policy in case.runs and reference in case.runs:
                prefix = f"{case.name}/{case.seed}/"
                base.update({prefix + k: v for k, v in case.runs[policy].tcts.items()})
                mine.update({prefix + k: v for k, v in case.runs[reference].tcts.items()})
                alone.update({prefix + k: v for k, v in case.isolated.items()})
        if base:
            out[f"{reference}/{policy}"] = {
                **speedup(base, mine), "ceiling": speedup_ceiling(base, mine, alone)
            }
    return out
