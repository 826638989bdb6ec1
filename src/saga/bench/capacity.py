"""Goodput capacity: the highest Poisson arrival rate a policy serves within its service level.

A workflow meets the service level when its TCT is at most ``goodput_slowdown`` (2) times
its TCT alone on an idle replica (DistServe's goodput, taken per workflow); a rate is
*served* when at least ``goodput_target`` (90 %) of the workflows meet it. A policy's
capacity is the highest rate found served by a bisection that first brackets the answer
(doubling the rate until one fails, or halving it until one passes) and then halves the
bracket until the failing rate is within ``capacity_tolerance`` (5 %) of the passing one.

Seeds: every probe runs each seed's workflows (each seed draws its own workflows and
arrival times) and the attainment is *pooled*: workflows meeting the level over all
workflows of all seeds. One search per policy over the pooled share keeps a single
well-defined service level on a larger sample; the per-seed shares are kept with every
probe so that a seed that alone would fail is visible.

A finite set of workflows has a rate past which it is a burst: once the arrivals of all of
them span a tenth of their median TCT alone, a higher rate changes nothing. The search
stops growing there (``burst_rate``); a policy still served at that rate has a capacity
reported as not bracketed (at least that rate, on this many workflows).

The workflows are finite: the first arrive to an idle cluster and the last see it drain, so
the capacity is that of a steady state only when the arrivals span several TCTs (200 coding
workflows at 0.05/s span 4000 s, two mean TCTs: the full scenario is near that edge, the
quick one, a burst or two, well past it).

Every rate is applied by re-timing the same workflows (:func:`saga.bench.workloads.retime`),
so the workflows, and their isolated TCTs, are the same at every rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from saga.bench.scenario import Scenario, WorkloadSpec
from saga.bench.workloads import build_spec, retime
from saga.core.workflow import Workflow
from saga.sched.registry import build_policy
from saga.sim.cluster import ClusterSpec, get_cluster
from saga.sim.run import isolated_tcts
from saga.sim.simulator import Simulation

Progress = Callable[[str], None]

#: The bracket grows or shrinks by this factor per probe, at most this many times.
BRACKET_FACTOR = 2.0
BRACKET_STEPS = 12


@dataclass
class CapacityPoint:
    """One probe: a policy at a rate, its pooled attainment and each seed's."""

    policy: str
    rate: float
    attainment: float
    served: bool
    per_seed: dict[int, float] = field(default_factory=dict)


class CapacitySearch:
    """The bisection of one policy, as a state machine: ask :meth:`next_rate`, run it,
    :meth:`record` the attainment. Pure: it neither simulates nor reads a clock."""

    def __init__(
        self, start: float, *, target: float, tolerance: float, max_rate: float = math.inf
    ) -> None:
        if not 0 < start <= max_rate:
            raise ValueError(f"start rate must be in (0, {max_rate}], got {start}")
        self.start = start
        self.max_rate = max_rate
        self.target = target
        self.tolerance = tolerance
        self.served: float | None = None  # highest rate served
        self.failed: float | None = None  # lowest rate above it not served
        self.probes = 0

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the search is done."""
        low, high = self.served, self.failed
        if low is None and high is None:
            return self.start
        if self.probes > BRACKET_STEPS and (low is None or high is None):
            return None  # no bracket within the factor's reach: give up, say so
        if high is None:
            assert low is not None
            return None if low >= self.max_rate else min(low * BRACKET_FACTOR, self.max_rate)
        if low is None:
            return high / BRACKET_FACTOR
        if high <= low * (1 + self.tolerance):
            return None
        return (low + high) / 2

    def record(self, rate: float, attainment: float) -> bool:
        """Record a probe; True if ``rate`` was served."""
        self.probes += 1
        served = attainment >= self.target
        if served:
            if self.served is None or rate > self.served:
                self.served = rate
        elif self.failed is None or rate < self.failed:
            self.failed = rate
        # a noisy attainment may pass above a failed rate: keep the bracket ordered
        if self.served is not None and self.failed is not None and self.failed <= self.served:
            self.failed = None
        return served

    @property
    def capacity(self) -> float:
        """The highest rate served (0 if none was)."""
        return self.served or 0.0

    @property
    def bracketed(self) -> bool:
        """True when the capacity lies between a served and a failed rate."""
        return self.served is not None and self.failed is not None


def search(
    attainment: Callable[[float], float],
    start: float,
    *,
    target: float,
    tolerance: float,
    max_rate: float = math.inf,
) -> tuple[float, list[tuple[float, float]]]:
    """Run one search against an attainment function; (capacity, probes as (rate, share))."""
    state = CapacitySearch(start, target=target, tolerance=tolerance, max_rate=max_rate)
    probes: list[tuple[float, float]] = []
    while (rate := state.next_rate()) is not None:
        share = attainment(rate)
        state.record(rate, share)
        probes.append((rate, share))
    return state.capacity, probes


@dataclass
class CapacityCase:
    """The capacity of every policy on one workload and cluster."""

    workload: str
    cluster: str
    replicas: int
    seeds: list[int]
    workflows: int  # per seed (the smallest)
    capacity: dict[str, float] = field(default_factory=dict)
    bracketed: dict[str, bool] = field(default_factory=dict)
    points: list[CapacityPoint] = field(default_factory=list)
    burst_rate: float = math.inf
    source: str = ""  # the registry workload (or trace file) the workflows came from
    params: dict[str, str] = field(default_factory=dict)  # its params, as given
    wall_seconds: float = 0.0

    def ratios(self, reference: str) -> dict[str, float]:
        """capacity of ``reference`` over each other policy's (inf when theirs is 0)."""
        mine = self.capacity.get(reference)
        if mine is None:
            return {}
        return {
            f"{reference}/{name}": (mine / value if value > 0 else math.inf)
            for name, value in self.capacity.items()
            if name != reference
        }


# ---- jobs run in worker processes ----------------------------------------------------------
AttainmentJob = tuple[ClusterSpec, str, list[Workflow], int, dict[str, float], float]


def met_service_level(job: AttainmentJob) -> tuple[int, int, float]:
    """(workflows meeting the level, workflows, wall seconds) for one policy on one seed's
    re-timed workflows. An unfinished or rejected workflow misses."""
    cluster, policy, workflows, seed, isolated, slowdown = job
    started = time.perf_counter()
    result = Simulation(cluster, build_policy(policy), workflows, seed=seed).run()
    met = sum(
        1
        for w in result.workflows
        if w.finished_at >= 0 and not w.rejected
        and w.finished_at - w.arrival <= slowdown * isolated[w.workflow]
    )
    return met, len(result.workflows), time.perf_counter() - started


def _isolated_job(job: tuple[ClusterSpec, list[Workflow]]) -> dict[str, float]:
    cluster, workflows = job
    return isolated_tcts(cluster, workflows)


def burst_rate(
    per_seed: dict[int, list[Workflow]], isolated: dict[int, dict[str, float]]
) -> float:
    """The rate at which the fewest workflows of a seed arrive within a tenth of the median
    TCT alone: past it the workflows are a burst (see the module doc)."""
    alone = sorted(t for by_id in isolated.values() for t in by_id.values())
    median = alone[len(alone) // 2] if alone else 0.0
    fewest = min(len(w) for w in per_seed.values())
    return (fewest - 1) / (0.1 * median) if median > 0 and fewest > 1 else math.inf


# ---- the scenario kind ---------------------------------------------------------------------
def start_rate(spec: Scenario, workload: WorkloadSpec) -> float:
    """The first rate probed: the scenario's, else the workload's own, else 0.1/s."""
    if spec.capacity_start is not None:
        return spec.capacity_start
    if workload.rate is not None:
        return workload.rate
    return float(workload.params.get("rate", 0.1))


def measure_capacity(
    spec: Scenario, workload: WorkloadSpec, pool: Executor, say: Progress
) -> CapacityCase:
    """Every policy's goodput capacity on ``workload`` (see the module doc)."""
    cluster = get_cluster(workload.cluster or spec.cluster)
    per_seed = {seed: build_spec(workload, seed, {})[0] for seed in spec.seeds}
    case = capacity_on(
        cluster,
        per_seed,
        spec.policies,
        start=start_rate(spec, workload),
        slowdown=spec.goodput_slowdown,
        target=spec.goodput_target,
        tolerance=spec.capacity_tolerance,
        pool=pool,
        say=say,
        title=workload.title,
    )
    case.source = workload.name or workload.trace or ""
    case.params = workload.string_params()
    return case


def capacity_on(
    cluster: ClusterSpec,
    per_seed: dict[int, list[Workflow]],
    policies: Sequence[str],
    *,
    start: float,
    slowdown: float,
    target: float,
    tolerance: float,
    pool: Executor,
    say: Progress,
    title: str = "",
) -> CapacityCase:
    """The searches of every policy, run in lockstep: each round probes every unfinished
    policy on every seed at once, so the pool's workers stay busy."""
    started = time.perf_counter()
    say(f"{title}: isolated TCTs of {sum(len(w) for w in per_seed.values())} workflows")
    isolated: dict[int, dict[str, float]] = {}
    for seed, workflows in per_seed.items():
        half = (len(workflows) + 1) // 2
        parts = pool.map(_isolated_job, [(cluster, workflows[:half]), (cluster, workflows[half:])])
        isolated[seed] = {k: v for part in parts for k, v in part.items()}
    case = CapacityCase(
        title, cluster.name, cluster.replicas, list(per_seed),
        min(len(w) for w in per_seed.values()),
    )
    case.burst_rate = burst_rate(per_seed, isolated)
    searches = {
        p: CapacitySearch(
            min(start, case.burst_rate), target=target, tolerance=tolerance,
            max_rate=case.burst_rate,
        )
        for p in policies
    }
    while True:
        todo = [(p, rate) for p, s in searches.items() if (rate := s.next_rate()) is not None]
        if not todo:
            break
        jobs: list[AttainmentJob] = [
            (cluster, policy, retime(per_seed[seed], rate, seed), seed, isolated[seed], slowdown)
            for policy, rate in todo
            for seed in per_seed
        ]
        say(f"{title}: probing {len(todo)} policies x {len(per_seed)} seeds")
        outcomes = iter(pool.map(met_service_level, jobs))
        for policy, rate in todo:
            met = total = 0
            shares: dict[int, float] = {}
            wall = 0.0
            for seed in per_seed:
                seed_met, seed_total, seconds = next(outcomes)
                met, total, wall = met + seed_met, total + seed_total, wall + seconds
                shares[seed] = seed_met / seed_total
            share = met / total
            served = searches[policy].record(rate, share)
            case.points.append(CapacityPoint(policy, rate, share, served, shares))
            say(
                f"{title}: {policy} at {rate:.4g} wf/s: {100 * share:.0f} % within "
                f"{slowdown:g}x ({'served' if served else 'not served'}) done in {wall:.1f} s"
            )
    for policy, state in searches.items():
        case.capacity[policy] = state.capacity
        case.bracketed[policy] = state.bracketed
    case.wall_seconds = time.perf_counter() - started
    return case
