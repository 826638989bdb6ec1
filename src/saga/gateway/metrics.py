"""The gateway's counters, rendered as Prometheus text at ``GET /metrics``."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from typing import NamedTuple


class LatencySummary:
    """Count, sum and quantiles over the most recent samples (a bounded reservoir)."""

    def __init__(self, keep: int = 4096) -> None:
        self.count = 0
        self.total = 0.0
        self._recent: deque[float] = deque(maxlen=keep)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self._recent.append(seconds)

    def quantile(self, q: float) -> float:
        if not self._recent:
            return float("nan")
        data = sorted(self._recent)
        return data[min(len(data) - 1, int(q * len(data)))]


#: Moves kept by :attr:`Metrics.moves`.
MOVES_KEPT = 1024


class Move(NamedTuple):
    """A workflow's call placed off its home, and what the views said then."""

    at: float  # the gateway's clock
    workflow: str
    home: int
    to: int
    backlog: list[int]  # per replica: the view's prefill backlog, tokens
    load: list[int]  # per replica: calls in flight
    cached: list[int]  # per replica: the workflow's prefix the view matched, blocks
    speed: float  # the engines' learned speed (1.0: not learned)


#: Call records kept by :attr:`Metrics.phases`, retention steps by :attr:`Metrics.retain_steps`.
PHASES_KEPT = 4096


class CallPhases(NamedTuple):
    """Where one answered call's time went at the gateway, in seconds (its gateway clock)."""

    at: float  # when it arrived
    workflow: str
    call: int  # the call's index in its workflow
    replica: int
    door: float  # held by admission (the policy's deferral)
    retain_wait: float  # waiting for the workflow's previous retention step
    queue: float  # waiting for a concurrency slot of its replica (the view's queue)
    prepare: float  # the backend's adaptation (llama.cpp: its slot; a restore included)
    upstream: float  # sent to the engine until its answer was complete at the gateway


class RetainTiming(NamedTuple):
    """One retention decision carried out by a backend, and how long that took."""

    at: float  # when it began (the gateway's clock)
    workflow: str
    kind: str
    seconds: float


class Metrics:
    """Everything ``/metrics`` reports that the gateway counts itself."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)  # (tenant, status)
        self.admissions: defaultdict[str, int] = defaultdict(int)  # verdict
        self.retentions: defaultdict[str, int] = defaultdict(int)  # kind
        self.retention_errors = 0
        # next calls that stopped waiting for their workflow's retention step (retain_wait)
        self.retain_wait_timeouts = 0
        self.decision_latency = LatencySummary()
        self.tenant_latency: defaultdict[str, LatencySummary] = defaultdict(LatencySummary)
        self.tenant_slowdown: defaultdict[str, LatencySummary] = defaultdict(LatencySummary)
        # calls of tenants with an SLO: (tenant, whether the call's slowdown met it)
        self.tenant_slo: defaultdict[tuple[str, bool], int] = defaultdict(int)
        self.admission_waiting = 0
        self.retries = 0
        self.client_disconnects = 0
        self.shed: defaultdict[str, int] = defaultdict(int)  # bound -> calls refused
        # learned-graph sync: published / applied / dropped observations; errors per op
        self.graph_observations: defaultdict[str, int] = defaultdict(int)
        self.graph_sync_errors: defaultdict[str, int] = defaultdict(int)
        # store operations on the call path that failed (the call went on without them)
        self.store_errors: defaultdict[str, int] = defaultdict(int)
        self.store_skipped: defaultdict[str, int] = defaultdict(int)  # while it was down
        # the last MOVES_KEPT placements that moved a workflow off its home (pipeline.place):
        # when, the workflow, from, to, and per replica the view's prefill backlog
        # (tokens), calls in flight and the workflow's prefix it held (blocks), with the
        # engines' learned speed (for `saga bench real`'s record, not /metrics)
        self.moves: deque[Move] = deque(maxlen=MOVES_KEPT)
        # the last PHASES_KEPT answered calls' time at the gateway, and the last retention
        # steps carried out (for `saga bench real`'s per-call record, not /metrics)
        self.phases: deque[CallPhases] = deque(maxlen=PHASES_KEPT)
        self.retain_steps: deque[RetainTiming] = deque(maxlen=PHASES_KEPT)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class PromText:
    """A tiny Prometheus text-format writer."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Iterable[tuple[str, str]] = ()) -> None:
        pairs = ",".join(f'{k}="{_esc(v)}"' for k, v in labels)
        label = "{" + pairs + "}" if pairs else ""
        self.lines.append(f"{name}{label} {value:g}" if value == value else f"{name}{label} NaN")

    def summary(
        self, name: str, summary: LatencySummary, labels: tuple[tuple[str, str], ...] = ()
    ) -> None:
        for q in (0.5, 0.99):
            self.sample(name, summary.quantile(q), (*labels, ("quantile", f"{q:g}")))
        self.sample(name + "_sum", summary.total, labels)
        self.sample(name + "_count", summary.count, labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
