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
