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

Steady state, not a burst: a probe at rate r offers the workflows that arrive within a
window of ``capacity_window`` (8) median TCTs alone, drawn from a pool of the workload's
workflows (its count), and judges only those that arrive after a warm-up of
``capacity_warmup`` (1) median TCT alone, when the cluster has filled. A higher rate so
offers more workflows over the same time, as a real stream would: past the capacity the
backlog grows through the window and the late arrivals miss (a window of 3 was too short:
coding agents on 2 replicas at about 1.2x their capacity met the level 89 % of the time over 3
median TCTs, 61 % over 6 and 28 % over 10). When the pool runs out before
the window ends, the probe offered fewer workflows than the rate calls for: a failure there
is still a failure, but a success is only a lower bound, so the search stops growing and
reports the capacity as "at least" (``limited``).

A probe stops as soon as its verdict is certain, with the verdict the full run would give:
its seeds run one after the other, and each run halts at the instant enough judged workflows
have certainly missed (not finished by their arrival plus 2x their TCT alone, or rejected)
that the pooled share can no longer reach the target, or enough have met the level that it
reaches it whatever the others do (:mod:`saga.bench.early_verdict`); the seeds after it need
not run. A stopped probe's attainment is then a bound (``stopped``): at most the value on a
failure, at least on a success. The capacities, brackets and verdicts are exact.

Every rate re-times the same pool (:func:`saga.bench.workloads.retime`): a higher rate
offers a longer prefix of the same workflows in the same order, their isolated TCTs computed
once.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field, replace

from saga.bench.early_verdict import VerdictWatch, decisive_misses
from saga.bench.scenario import Scenario, WorkloadSpec
from saga.bench.workloads import build_spec, retime
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec
from saga.metrics.stationarity import met_level
from saga.sched.gated import SUFFIX as GATED
from saga.sched.gated import GatedPolicy
from saga.sched.registry import build_policy
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
    judged: int = 0  # workflows judged, over all seeds (arrived after the warm-up)
    offered: int = 0  # workflows offered, over all seeds (arrived within the window)
    limited: bool = False  # a seed's pool ran out before the window ended
    #: the probe stopped once its verdict was certain (early_verdict): ``attainment`` and
    #: ``per_seed`` are then bounds, at most if not served and at least if served, and
    #: ``per_seed`` lacks the seeds it needed not run
    stopped: bool = False
    #: not run: the run of the policy's gated twin at this rate, whose gate held nobody, so
    #: the same run (:func:`twin_of`); its CPU counts for the twin only
    twin: str = ""


class CapacitySearch:
    """The bisection of one policy, as a state machine: ask :meth:`next_rate`, run it,
    :meth:`record` the attainment. Pure: it neither simulates nor reads a clock."""

    def __init__(self, start: float, *, target: float, tolerance: float) -> None:
        if start <= 0:
            raise ValueError(f"start rate must be > 0, got {start}")
        self.start = start
        self.limited = False  # a served probe ran out of workflows: capacity at least that
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
            return None if self.limited else low * BRACKET_FACTOR
        if low is None:
            return high / BRACKET_FACTOR
        if high <= low * (1 + self.tolerance):
            return None
        return (low + high) / 2

    def record(self, rate: float, attainment: float, limited: bool = False) -> bool:
        """Record a probe; True if ``rate`` was served. ``limited``: the probe offered
        fewer workflows than the rate called for (its pool ran out)."""
        self.probes += 1
        served = attainment >= self.target
        if served:
            if self.served is None or rate > self.served:
                self.served = rate
                self.limited = limited
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
        """True when the capacity lies between a served and a failed rate, and the served
        one offered all the workflows its rate called for."""
        return self.served is not None and self.failed is not None and not self.limited


def search(
    attainment: Callable[[float], float],
    start: float,
    *,
    target: float,
    tolerance: float,
    limit: float = math.inf,
) -> tuple[float, list[tuple[float, float]]]:
    """Run one search against an attainment function; (capacity, probes as (rate, share)).
    Probes at or above ``limit`` are marked limited (their pool ran out)."""
    state = CapacitySearch(start, target=target, tolerance=tolerance)
    probes: list[tuple[float, float]] = []
    while (rate := state.next_rate()) is not None:
        share = attainment(rate)
        state.record(rate, share, limited=rate >= limit)
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
    window: float = math.inf  # seconds of arrivals per probe
    warmup: float = 0.0  # seconds of arrivals not judged
    limited: dict[str, bool] = field(default_factory=dict)
    source: str = ""  # the registry workload (or trace file) the workflows came from
    params: dict[str, str] = field(default_factory=dict)  # its params, as given
    wall_seconds: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per policy, its probes'

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
@dataclass(frozen=True)
class ProbeJob:
    """One policy at one rate on every seed's re-timed workflows (in the seeds' order)."""

    cluster: ClusterSpec
    policy: str
    seeds: list[tuple[int, list[Workflow]]]
    isolated: dict[int, dict[str, float]]  # per seed: workflow -> TCT alone
    slowdown: float
    warmup: float  # workflows arriving earlier are not judged
    target: float
    early: bool = True  # stop once the verdict is certain (False: exact shares, for studies)


@dataclass(frozen=True)
class SeedOutcome:
    """A seed's part of a probe. ``met`` is exact when the run went to its end ("ran");
    when it stopped once the verdict was certain ("stopped"), or never ran because the
    earlier seeds had decided it ("skipped"), ``met`` is a bound in the verdict's direction:
    at most (judged less the certain misses, or all judged) on a failure, at least (those
    that met the level so far, or none) on a success."""

    met: int
    judged: int
    state: str  # "ran" | "stopped" | "skipped"
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # the worker's CPU time (what the run costs, whatever the load)
    #: a NAME+gate run: the admissions its gate deferred up to the run's end or halt (0: the
    #: run was NAME's own, :func:`twin_of`); None for a policy with no gate, or not run
    gate_holds: int | None = None


def judged_of(workflows: Sequence[Workflow], warmup: float) -> list[Workflow]:
    """The workflows a probe judges: those arriving at or after the warm-up."""
    return [w for w in workflows if w.arrival >= warmup]


def probe(job: ProbeJob) -> dict[int, SeedOutcome]:
    """Run the probe's seeds one after the other, each stopped at the instant the pooled
    verdict becomes certain (early_verdict); the seeds after that one are not run. A
    workflow that did not finish, or was rejected, misses. The verdict (met over judged,
    pooled, against the target) is the one the full runs would give."""
    judged = {seed: judged_of(workflows, job.warmup) for seed, workflows in job.seeds}
    total = sum(len(j) for j in judged.values())
    decisive = decisive_misses(total, job.target)  # misses that fail the rate
    needed = 0 if decisive is None else total - decisive + 1  # meets that serve it
    missed = met = 0  # over the seeds run so far
    out: dict[int, SeedOutcome] = {}
    for seed, workflows in job.seeds:
        count = len(judged[seed])
        if job.early and decisive is not None and missed >= decisive:
            out[seed] = SeedOutcome(count, count, "skipped")  # failed: at most all meet
            continue
        if job.early and met >= needed:
            out[seed] = SeedOutcome(0, count, "skipped")  # served: at least none meets
            continue
        started, cpu = time.perf_counter(), time.process_time()
        alone = job.isolated[seed]
        watch = None if not job.early else VerdictWatch(
            {w.id: alone[w.id] for w in judged[seed]}, job.slowdown,
            misses=None if decisive is None else decisive - missed, meets=needed - met,
        )
        policy = build_policy(job.policy)
        result = Simulation(job.cluster, policy, workflows, seed=seed, watch=watch).run()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        holds = policy.gate_holds if isinstance(policy, GatedPolicy) else None
        if watch is not None and watch.verdict == "failed":
            outcome = SeedOutcome(count - watch.missed, count, "stopped", seconds, cpu, holds)
            missed, met = missed + watch.missed, met + count - watch.missed
        elif watch is not None and watch.verdict == "served":
            outcome = SeedOutcome(watch.met, count, "stopped", seconds, cpu, holds)
            missed, met = missed + watch.missed, met + watch.met
        else:
            seed_met = sum(1 for w in result.workflows if w.arrival >= job.warmup
                           and met_level(w, alone[w.workflow], job.slowdown))
            outcome = SeedOutcome(seed_met, count, "ran", seconds, cpu, holds)
            missed, met = missed + count - seed_met, met + seed_met
        out[seed] = outcome
    return out


def twin_of(policy: str, policies: Collection[str]) -> str | None:
    """The gated twin whose probes stand for ``policy``'s wherever its gate held nobody:
    ``NAME+gate`` for ``NAME`` when both are searched, else None.

    Exact: a ``NAME+gate`` run in which the gate deferred no admission (``gate_holds`` 0, up
    to the run's end or its early verdict's halt) is ``NAME``'s run, event for event. The
    gate's ``admit`` then returns ``NAME``'s own verdict at every call; every other hook
    forwards to ``NAME`` after bookkeeping on the gate's own state (its queue, counts and
    graph; it reads the replicas only through views that sync them exactly, and draws no
    random numbers), so the simulator calls ``NAME``'s hooks with the same arguments at the
    same instants, and the watch halts at the same event. So the probe's outcome, seed by
    seed, is ``NAME``'s (tests/bench/test_capacity.py compares both runs' records)."""
    if policy.endswith(GATED) or policy + GATED not in policies:
        return None
    return policy + GATED


def held_nobody(outcomes: dict[int, SeedOutcome]) -> bool:
    """Whether a gated probe's gate deferred no admission in any seed it ran."""
    return all(o.gate_holds == 0 for o in outcomes.values() if o.state != "skipped")


def offered(pool: Sequence[Workflow], rate: float, seed: int, window: float
            ) -> tuple[list[Workflow], bool]:
    """The workflows of ``pool`` re-timed at ``rate`` that arrive within ``window``
    seconds, and whether the pool ran out first (its last arrival inside the window)."""
    timed = retime(pool, rate, seed)
    kept = [w for w in timed if w.arrival < window]
    return kept, len(kept) == len(timed) and math.isfinite(window)


def _isolated_job(job: tuple[ClusterSpec, list[Workflow]]) -> dict[str, float]:
    cluster, workflows = job
    return isolated_tcts(cluster, workflows)


def median_alone(isolated: dict[int, dict[str, float]]) -> float:
    """The median TCT alone over every seed's workflows (the upper one of an even count)."""
    alone = sorted(t for by_id in isolated.values() for t in by_id.values())
    return alone[len(alone) // 2] if alone else 0.0


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
    return measure_capacities(spec, [workload], pool, say)[0]


def measure_capacities(
    spec: Scenario, workloads: Sequence[WorkloadSpec], pool: Executor, say: Progress
) -> list[CapacityCase]:
    """Every policy's goodput capacity on each of ``workloads``, all their searches sharing
    the pool at once (one workload's last probes overlap the next one's first)."""
    searches = []
    for workload in workloads:
        cluster = spec.cluster_for(workload)
        window = cluster.cost_model().model.max_context
        per_seed = {seed: build_spec(workload, seed, {}, window)[0] for seed in spec.seeds}
        searches.append(CaseSearches(
            cluster,
            per_seed,
            spec.policies,
            start=start_rate(spec, workload),
            slowdown=spec.goodput_slowdown,
            target=spec.goodput_target,
            tolerance=spec.capacity_tolerance,
            window_tcts=spec.capacity_window,
            warmup_tcts=spec.capacity_warmup,
            say=say,
            title=workload.title,
        ))
    cases = run_searches(searches, pool)
    for case, workload in zip(cases, workloads, strict=True):
        case.source = workload.name or workload.trace or ""
        case.params = workload.string_params()
    return cases


def capacity_on(
    cluster: ClusterSpec,
    per_seed: dict[int, list[Workflow]],
    policies: Sequence[str],
    *,
    start: float,
    slowdown: float,
    target: float,
    tolerance: float,
    window_tcts: float | None,
    warmup_tcts: float,
    pool: Executor,
    say: Progress,
    title: str = "",
) -> CapacityCase:
    """The searches of every policy on one set of workflows per seed (:class:`CaseSearches`).
    ``window_tcts`` and ``warmup_tcts`` are in median TCTs alone (None: offer every workflow
    of the pool)."""
    searches = CaseSearches(
        cluster, per_seed, policies, start=start, slowdown=slowdown, target=target,
        tolerance=tolerance, window_tcts=window_tcts, warmup_tcts=warmup_tcts, say=say,
        title=title,
    )
    return run_searches([searches], pool)[0]


ProbeFuture = Future[dict[int, SeedOutcome]]


class CaseSearches:
    """The searches of every policy on one workload: its TCTs alone first, then each
    policy's probes, its next one submitted as soon as its last one is in, so that no core
    waits for a round's slowest simulation. The searches are independent: each probes the
    same rates as in lockstep rounds, whatever order the probes finish in."""

    def __init__(
        self,
        cluster: ClusterSpec,
        per_seed: dict[int, list[Workflow]],
        policies: Sequence[str],
        *,
        start: float,
        slowdown: float,
        target: float,
        tolerance: float,
        window_tcts: float | None,
        warmup_tcts: float,
        say: Progress,
        title: str = "",
    ) -> None:
        self.cluster = cluster
        self.per_seed = per_seed
        self.slowdown = slowdown
        self.target = target
        self.window_tcts = window_tcts
        self.warmup_tcts = warmup_tcts
        self.say = say
        self.title = title
        self.searches = {
            p: CapacitySearch(start, target=target, tolerance=tolerance) for p in policies
        }
        self.order = {p: i for i, p in enumerate(self.searches)}
        self.probes = dict.fromkeys(self.searches, 0)  # probes started per policy
        # NAME -> NAME+gate: NAME takes its twin's probe at a rate where the gate held nobody
        self.twins = {p: t for p in self.searches if (t := twin_of(p, self.searches))}
        # per twin: the rates its gate held nobody at, with (limited, offered, outcomes)
        self.shared: dict[str, dict[float, tuple[bool, int, dict[int, SeedOutcome]]]] = {
            t: {} for t in self.twins.values()}
        self.flying: dict[str, float] = {}  # policy -> the rate of its probe in flight
        self.awaiting: dict[str, str] = {}  # twin -> NAME, waiting for the twin's probe
        self.last_cpu: dict[str, float] = {}  # policy -> its last probe's CPU seconds
        self.found: list[tuple[int, int, CapacityPoint]] = []  # (probe, policy order, point)
        self.isolated: dict[int, dict[str, float]] = {}
        self.case: CapacityCase | None = None
        self.started = 0.0

    def isolated_jobs(self, pool: Executor) -> list[Future[dict[str, float]]]:
        """Submit the TCTs alone: every seed's two halves, none waiting for another."""
        self.started = time.perf_counter()
        count = sum(len(w) for w in self.per_seed.values())
        self.say(f"{self.title}: isolated TCTs of {count} workflows")
        jobs: list[Future[dict[str, float]]] = []
        for workflows in self.per_seed.values():
            half = (len(workflows) + 1) // 2
            for part in (workflows[:half], workflows[half:]):
                jobs.append(pool.submit(_isolated_job, (self.cluster, part)))
        return jobs

    def begin(self, isolated: list[dict[str, float]], queue: ProbeQueue) -> None:
        """With the TCTs alone in (two halves per seed, in order), submit the first probes."""
        parts = iter(isolated)
        self.isolated = {seed: {**next(parts), **next(parts)} for seed in self.per_seed}
        median = median_alone(self.isolated)
        self.case = CapacityCase(
            self.title, self.cluster.name, self.cluster.replicas, list(self.per_seed),
            min(len(w) for w in self.per_seed.values()),
            window=math.inf if self.window_tcts is None else self.window_tcts * median,
            warmup=self.warmup_tcts * median,
        )
        # a gated twin first, so that NAME waits for its probe at the same rate
        for policy in sorted(self.searches, key=lambda p: p in self.twins):
            self.submit(policy, queue)

    def submit(self, policy: str, queue: ProbeQueue) -> None:
        """Submit the policy's next probe, if its search is not done; for NAME, take its
        gated twin's probe at that rate instead where the gate held nobody (:func:`twin_of`),
        or wait for the twin's probe in flight at that rate."""
        assert self.case is not None
        twin = self.twins.get(policy)
        while (rate := self.searches[policy].next_rate()) is not None and twin is not None:
            if self.flying.get(twin) == rate:
                self.awaiting[twin] = policy
                return
            shared = self.shared[twin].get(rate)
            if shared is None:
                break
            limited, size, outcomes = shared
            self.probes[policy] += 1
            free = {seed: replace(o, seconds=0.0, cpu_seconds=0.0) for seed, o in outcomes.items()}
            self.record(policy, rate, limited, size, free, twin=twin)
        if rate is None:
            return
        limited = False
        size = 0
        seeds: list[tuple[int, list[Workflow]]] = []
        for seed, workflows in self.per_seed.items():
            kept, ran_out = offered(workflows, rate, seed, self.case.window)
            limited, size = limited or ran_out, size + len(kept)
            seeds.append((seed, kept))
        job = ProbeJob(self.cluster, policy, seeds, self.isolated, self.slowdown,
                       self.case.warmup, self.target)
        # its last probe's CPU: the probes that cost most go first (ProbeQueue)
        cost = self.last_cpu.get(policy, math.inf)
        queue.add(cost, job, (self, policy, rate, limited, size))
        self.flying[policy] = rate
        self.probes[policy] += 1
        self.say(f"{self.title}: probing {policy} at {rate:.4g} wf/s on "
                 f"{len(self.per_seed)} seeds")

    def done(self, policy: str, rate: float, limited: bool, size: int,
             outcomes: dict[int, SeedOutcome], queue: ProbeQueue) -> None:
        """A probe is in: record it, submit the policy's next one, and let the NAME that
        waits for it (if it is a twin's) take it or run its own."""
        del self.flying[policy]
        self.last_cpu[policy] = sum(o.cpu_seconds for o in outcomes.values())
        self.record(policy, rate, limited, size, outcomes)
        if policy in self.shared and held_nobody(outcomes):
            self.shared[policy][rate] = (limited, size, outcomes)
        self.submit(policy, queue)
        if (waiting := self.awaiting.pop(policy, None)) is not None:
            self.submit(waiting, queue)

    def record(self, policy: str, rate: float, limited: bool, size: int,
               outcomes: dict[int, SeedOutcome], twin: str = "") -> None:
        """A probe is in: pool its seeds' outcomes (in the seeds' order) into a point."""
        met = sum(o.met for o in outcomes.values())
        total = sum(o.judged for o in outcomes.values())
        wall = sum(o.seconds for o in outcomes.values())
        cpu = sum(o.cpu_seconds for o in outcomes.values())
        shares = {seed: o.met / o.judged if o.judged else 1.0
                  for seed, o in outcomes.items() if o.state != "skipped"}
        # no workflow arrived after the warm-up (a very low rate): nothing missed
        share = met / total if total else 1.0
        stopped = any(o.state != "ran" for o in outcomes.values())
        served = self.searches[policy].record(rate, share, limited)
        assert self.case is not None
        self.case.cpu_seconds[policy] = self.case.cpu_seconds.get(policy, 0.0) + cpu
        point = CapacityPoint(policy, rate, share, served, shares, total, size, limited, stopped,
                              twin)
        self.found.append((self.probes[policy], self.order[policy], point))
        self.say(
            f"{self.title}: {policy} at {rate:.4g} wf/s: "
            f"{('at least ' if served else 'at most ') if stopped else ''}"
            f"{100 * share:.0f} % of {total} within {self.slowdown:g}x "
            f"({'served' if served else 'not served'}) "
            + (f"as {twin}, whose gate held nobody" if twin else
               f"done in {wall:.1f} s ({cpu:.1f} CPU s)")
        )

    def finish(self) -> CapacityCase:
        assert self.case is not None
        case = self.case
        # the points in the order of lockstep rounds: every policy's first probe, then seconds
        case.points = [point for _, _, point in sorted(self.found, key=lambda f: f[:2])]
        for policy, state in self.searches.items():
            case.capacity[policy] = state.capacity
            case.bracketed[policy] = state.bracketed
            case.limited[policy] = state.limited
        case.wall_seconds = time.perf_counter() - self.started
        return case


Meta = tuple["CaseSearches", str, float, bool, int]  # search, policy, rate, limited, offered


class ProbeQueue:
    """The probes ready to run, handed to the pool at most ``width`` at a time (its
    workers), the costliest first: a probe's cost is taken as its policy's last probe's CPU
    (unknown, first: in submission order). The searches whose probes cost most are the
    longest chains; run first, they do not finish alone on one core while the other idles.
    Only the order of the work changes: each search sees only its own probes' outcomes."""

    def __init__(self, pool: Executor, width: int) -> None:
        self.pool = pool
        self.width = max(1, width)
        self.ready: list[tuple[float, int, ProbeJob, Meta]] = []  # a heap
        self.running: dict[ProbeFuture, Meta] = {}
        self._seq = 0  # ties: first added, first run

    def add(self, cost: float, job: ProbeJob, meta: Meta) -> None:
        heapq.heappush(self.ready, (-cost, self._seq, job, meta))
        self._seq += 1

    def fill(self) -> None:
        while self.ready and len(self.running) < self.width:
            _, _, job, meta = heapq.heappop(self.ready)
            self.running[self.pool.submit(probe, job)] = meta


def pool_width(pool: Executor) -> int:
    """The pool's workers (ThreadPoolExecutor and ProcessPoolExecutor keep them in
    ``_max_workers``; another executor is taken as having two)."""
    return int(getattr(pool, "_max_workers", 2))


def run_searches(searches: Sequence[CaseSearches], pool: Executor) -> list[CapacityCase]:
    """Run the searches of several workloads on one pool at once; their cases in order."""
    isolated = [s.isolated_jobs(pool) for s in searches]  # every workload's, queued at once
    queue = ProbeQueue(pool, pool_width(pool))
    for case_searches, jobs in zip(searches, isolated, strict=True):
        case_searches.begin([job.result() for job in jobs], queue)
        queue.fill()
    index = {id(s): i for i, s in enumerate(searches)}
    running = queue.running
    while running:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        # those done together, in a fixed order (workload, then policy)
        for future in sorted(done, key=lambda f: (index[id(running[f][0])],
                                                  running[f][0].order[running[f][1]])):
            case_searches, policy, rate, limited, size = running.pop(future)
            case_searches.done(policy, rate, limited, size, future.result(), queue)
        queue.fill()
    return [s.finish() for s in searches]
