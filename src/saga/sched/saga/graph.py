"""Agent Execution Graphs: a learned, online model of each agent's workflow structure.

Nodes are call sites: the tool that preceded the call (``^`` for a workflow's first
call, ``-`` for a later call with no tool) and a log2 bucket of the call's index,
so that the graph can learn that the chance of going on changes with progress.
After a call at node X the workflow either ends or runs a tool and calls again at
node Y. Edges count those outcomes; per tool a log-normal is fitted online to the
tool durations (running mean and variance of log seconds, Welford); per node the
mean output tokens and the tokens the prompt appends are kept.

Everything is learned from observations a real gateway has: when a call becomes
ready, when it finished, how many tokens it produced, when its workflow ended. It
never reads oracle fields (a call's future output length or tool time).

Cold start: every estimate is smoothed towards a pooled one with ``prior_weight``
pseudo-observations (node -> all nodes of its depth bucket -> configured prior),
and a tool's duration fit is used only after ``min_samples`` samples.

Answers: P(the workflow calls again within t), the expected gap, quantiles of the
gap, and the expected remaining calls and tokens from a node (a linear system).

Read order: the expected remaining work and the gap after a node are answered from a
copy of the graph taken at refresh points that the count of observations fixes; every
other estimate is of the graph as it is. Either way an estimate is a function of the
observations made so far alone, never of which estimates were read before, or when.

Sharing: a :class:`GraphStore` given a sink passes every observation its graphs learn
to it as an :class:`Observation` (plain data); :meth:`GraphStore.apply` learns
observations made elsewhere (another gateway's graphs) through the same ``observe_*``
methods, without passing them to the sink again, so that they are never echoed back.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

import numpy as np

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.quantile import bisect, bracket

START = "^"
NO_TOOL = "-"
_STD_NORMAL = NormalDist()
_SQRT2 = math.sqrt(2.0)
# Entries a Gap keeps of the quantiles asked of it and of the CDFs its bisections took;
# when full, it forgets them all and starts again. A Gap lives until its graph's next
# refresh point, n/64 observations apart once the graph has seen n, and predicted ends
# ask it a new quantile at nearly every call (their q moves with each observation): kept
# without bound, the caches grew with the refresh interval and the allocators kept each
# new peak (issue 19). Starting again keeps the recent bisection paths, which the next
# quantile (a q near the last) mostly follows: as fast as unbounded in the soak's pattern
# (scripts/graph_heap.py). No answer changes: an entry is the same computed or kept.
KEPT_QUANTILES = 16
KEPT_CDFS = 256


def node_key(tool: str | None, index: int, buckets: int) -> str:
    """The call site of call number ``index`` that followed ``tool``."""
    name = START if index == 0 else (tool or NO_TOOL)
    return f"{name}#{depth_bucket(index, buckets)}"


def depth_bucket(index: int, buckets: int) -> int:
    """0 for call 0, 1 for call 1, 2 for calls 2-3, 3 for 4-7, ... capped."""
    return min(index.bit_length(), buckets - 1)


@lru_cache(maxsize=65536)
def node_bucket(node: str) -> int:
    # memoized: the pooled estimates ask it of every node of a graph, per estimate
    return int(node.rsplit("#", 1)[1])


def node_tool(node: str) -> str:
    return node.rsplit("#", 1)[0]


ObservationKind = Literal["transition", "end", "output"]
_KIND_TAG: dict[ObservationKind, str] = {"transition": "t", "end": "e", "output": "o"}


@dataclass(frozen=True, slots=True)
class Observation:
    """One observation an agent's graph learned, as plain data, so that another
    process's graph of the same agent can learn it too (see :meth:`GraphStore.apply`)."""

    agent: str
    kind: ObservationKind
    node: str  # the call site observed (the source of a transition)
    dst: str = ""  # transition: the next call site
    duration: float = 0.0  # transition: seconds from the call's end to the next call
    growth: float = 0.0  # transition: tokens the next prompt appended
    tokens: int = 0  # output: tokens the call produced
    tenant: str = ""  # whose graph learned it (graphs are per tenant and agent)

    def to_row(self) -> list[str | float | int]:
        """A compact JSON-able row (only the fields of its kind, then the tenant if any)."""
        head: list[str | float | int] = [_KIND_TAG[self.kind], self.agent, self.node]
        if self.kind == "transition":
            row = [*head, self.dst, self.duration, self.growth]
        elif self.kind == "output":
            row = [*head, self.tokens]
        else:
            row = head
        return [*row, self.tenant] if self.tenant else row

    @classmethod
    def from_row(cls, row: object) -> Observation:
        """The observation :meth:`to_row` wrote; ValueError for anything else (rows come
        from other processes, perhaps of another version)."""
        if not isinstance(row, list) or len(row) < 3 or not all(
            isinstance(x, str) for x in row[:3]
        ):
            raise ValueError(f"not an observation row: {row!r}")
        tag, agent, node, *rest = row
        size = _ROW_FIELDS.get(tag)
        tenant = ""
        if size is not None and len(rest) == size + 1 and isinstance(rest[-1], str):
            tenant = rest.pop()
            if not tenant:
                raise ValueError(f"not an observation row: {row!r}")
        if tag == "t" and len(rest) == 3 and isinstance(rest[0], str):
            duration, growth = _finite(rest[1]), _finite(rest[2])
            return cls(agent, "transition", node, rest[0], duration, growth, tenant=tenant)
        if tag == "e" and not rest:
            return cls(agent, "end", node, tenant=tenant)
        if tag == "o" and len(rest) == 1 and type(rest[0]) is int:
            return cls(agent, "output", node, tokens=rest[0], tenant=tenant)
        raise ValueError(f"not an observation row: {row!r}")


_ROW_FIELDS = {"t": 3, "e": 0, "o": 1}  # fields after (tag, agent, node), tenant aside


def _finite(x: object) -> float:
    # bool is an int: refuse it, and NaN or infinity would poison the running means
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    return x


ObservationSink = Callable[[Observation], None]


@dataclass(slots=True)
class LogNormalFit:
    """Streaming log-normal fit: Welford's mean and variance of log(x)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        y = math.log(max(x, 1e-3))
        self.n += 1
        delta = y - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (y - self.mean)

    @property
    def sigma(self) -> float:
        # one sample says nothing of spread: callers fall back before that
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


@dataclass(frozen=True, slots=True)
class LogNormal:
    """A log-normal distribution by the mean and deviation of log(x)."""

    mu: float
    sigma: float

    def cdf(self, t: float) -> float:
        if t <= 0:
            return 0.0
        if self.sigma <= 1e-9:
            return 1.0 if math.log(t) >= self.mu else 0.0
        # = NormalDist().cdf(z), bit for bit, without its method-call overhead (hot path)
        return 0.5 * (1.0 + math.erf((math.log(t) - self.mu) / self.sigma / _SQRT2))

    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    def quantile(self, q: float) -> float:
        return math.exp(self.mu + self.sigma * _STD_NORMAL.inv_cdf(q))

    def mean_min(self, t: float) -> float:
        """E[min(X, t)]: how long memory held until X or a TTL of t is held."""
        if t <= 0:
            return 0.0
        if self.sigma <= 1e-9:
            return min(math.exp(self.mu), t)
        z = (math.log(t) - self.mu) / self.sigma
        partial = self.mean() * _STD_NORMAL.cdf(z - self.sigma)  # E[X; X <= t]
        return partial + t * (1.0 - _STD_NORMAL.cdf(z))


@dataclass(slots=True)
class Mean:
    n: int = 0
    total: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x

    def smoothed(self, prior: float, weight: float) -> float:
        if self.n + weight <= 0:
            return prior
        return (self.total + weight * prior) / (self.n + weight)


@dataclass(slots=True)
class _Node:
    ends: int = 0
    continues: int = 0
    successors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    output: Mean = field(default_factory=Mean)
    growth: Mean = field(default_factory=Mean)

    @property
    def outcomes(self) -> int:
        return self.ends + self.continues


@dataclass(slots=True)
class Gap:
    """What follows a call at one node: P(continue) and the tool-gap mixture."""

    p_continue: float
    mixture: tuple[tuple[float, LogNormal], ...]
    _quantiles: dict[float, float] = field(default_factory=dict, repr=False, compare=False)
    _ttl_tables: dict[tuple[float, tuple[float, ...]], tuple[tuple[float, float, float], ...]] = (
        field(default_factory=dict, repr=False, compare=False)
    )
    _parts: tuple[tuple[float, float, float], ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _bisected: dict[float, float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _mean: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._parts = tuple((w, d.mu, d.sigma) for w, d in self.mixture)

    def cdf(self, t: float) -> float:
        """P(the next call is ready within t | the workflow continues).

        :meth:`LogNormal.cdf` of each component inlined, with log(t) taken once: the
        same arithmetic in the same order, so bit for bit the same sum (the bisection
        of :meth:`_quantile` asks this at up to 40 midpoints per quantile)."""
        if t <= 0:
            return 0.0
        lt = math.log(t)
        erf = math.erf
        total = 0.0
        for w, mu, sigma in self._parts:
            if sigma <= 1e-9:
                total += w * (1.0 if lt >= mu else 0.0)
            else:
                total += w * (0.5 * (1.0 + erf((lt - mu) / sigma / _SQRT2)))
        return total

    def p_return_within(self, t: float) -> float:
        return self.p_continue * self.cdf(t)

    def mean(self) -> float:
        """The mean gap given the workflow continues (kept: retention asks it of every
        call that finishes at the node, and a Gap lives until the graph's next refresh)."""
        if self._mean is None:
            self._mean = sum(w * d.mean() for w, d in self.mixture)
        return self._mean

    def mean_min(self, t: float) -> float:
        """E[min(gap, t)], counting a workflow that never returns as holding t."""
        held = sum(w * d.mean_min(t) for w, d in self.mixture)
        return self.p_continue * held + (1.0 - self.p_continue) * t

    def residual_mean(self, elapsed: float) -> float:
        """E[gap - elapsed | gap > elapsed]: the tool time still expected of a workflow
        that has been in its tool ``elapsed`` seconds (given it continues). Log-normal gaps
        are heavy-tailed: the longer a tool has run, the longer it is expected to go on,
        where ``mean() - elapsed`` says it is due. Past the point where the mixture gives
        the gap no chance (a survival below 1e-12), ``elapsed`` itself."""
        if elapsed <= 0.0:
            return self.mean()
        survival = 1.0 - self.cdf(elapsed)
        if survival <= 1e-12:
            return elapsed
        beyond = self.mean() - sum(w * d.mean_min(elapsed) for w, d in self.mixture)
        return max(0.0, beyond / survival)

    def ttl_table(
        self, ttl_max: float, quantiles: tuple[float, ...]
    ) -> tuple[tuple[float, float, float], ...]:
        """(ttl, P(return within ttl), E[min(gap, ttl)]) for the TTLs at ``quantiles`` of
        the gap, capped at ``ttl_max``, ascending. Retention asks this of every call that
        finishes at a node; a Gap lives until the graph's next refresh, so it is kept."""
        key = (ttl_max, quantiles)
        table = self._ttl_tables.get(key)
        if table is None:
            ttls = sorted({min(self.quantile(q), ttl_max) for q in quantiles})
            table = tuple((t, self.p_return_within(t), self.mean_min(t)) for t in ttls)
            self._ttl_tables[key] = table
        return table

    def quantile(self, q: float) -> float:
        """The q-quantile of the gap given the workflow continues (bisection in log t)."""
        cached = self._quantiles.get(q)
        if cached is None:
            if len(self._quantiles) >= KEPT_QUANTILES:
                self._quantiles.clear()
            cached = self._quantiles[q] = self._quantile(q)
        return cached

    def _quantile(self, q: float) -> float:
        if len(self.mixture) == 1:
            return self.mixture[0][1].quantile(q)
        # the bisection of quantile.py, skipping the midpoints a proved bracket decides
        below, above = bracket(self._parts, q, self._cdf_at)
        return bisect(q, self._cdf_at, below, above)

    def _cdf_at(self, x: float) -> float:
        """:meth:`cdf` at t = exp(x), kept: the bisections of a gap's quantiles start down
        the same path, so the CDF at each midpoint serves the next quantile asked."""
        p = self._bisected.get(x)
        if p is None:
            if len(self._bisected) >= KEPT_CDFS:
                self._bisected.clear()
            p = self._bisected[x] = self.cdf(math.exp(x))
        return p


class AgentGraph:
    """The execution graph of one agent type, learned online.

    With a ``sink``, every observation is also passed to it (tagged with ``agent``),
    unless made with ``record=False`` (an observation learned from elsewhere)."""

    def __init__(
        self, config: SagaConfig, agent: str = "", sink: ObservationSink | None = None,
        tenant: str = "",
    ) -> None:
        self.config = config
        self.agent = agent
        self.tenant = tenant
        self.sink = sink
        self._nodes: dict[str, _Node] = defaultdict(_Node)
        self._tools: dict[str, LogNormalFit] = defaultdict(LogNormalFit)
        self._all_tools = LogNormalFit()
        # remaining() and gap() answer from the graph as it stood at its last refresh
        # point (see _touch): a copy taken at an observation count the schedule fixes, so
        # that what they answer never depends on when, or in which order, they were read.
        # None: the graph is its own copy (it has observed nothing, or it is a copy). Never
        # a reference to itself: a copy that held one would be a cycle, freed only by the
        # cyclic collector's rare full passes, its caches with it (issue 19).
        self._settled: AgentGraph | None = None
        self._values: dict[str, tuple[float, float]] | None = None  # solved on first read
        self._gaps: dict[str, Gap] = {}
        # every node's output and growth observations pooled, kept as they arrive: a
        # placement reads them three times, and summing every node each time cost more
        # than the rest of the read (the sums are of whole tokens: exact in any order)
        self._pooled = {"output": Mean(), "growth": Mean()}
        self._stale = 0
        self.observations = 0
        self.ends = 0  # workflow ends observed (what end prediction learns from)
        # pooled estimates per depth bucket, from every node of the graph: kept until the
        # next observation (the remaining-work solve asks them of every node, each a scan of all)
        self._pooled_continues: dict[int, float] = {}
        self._pooled_nexts: dict[int, dict[str, float]] = {}
        self._nexts: dict[str, dict[str, float]] = {}  # successors(), likewise

    # ---- observations --------------------------------------------------------------
    def observe_transition(
        self, src: str, dst: str, duration: float, growth: float, *, record: bool = True
    ) -> None:
        """A call at ``src`` was followed, ``duration`` s after it finished, by a call at
        ``dst`` whose prompt appended ``growth`` tokens."""
        if record and self.sink is not None:
            self.sink(Observation(self.agent, "transition", src, dst, duration, growth,
                                  tenant=self.tenant))
        node = self._nodes[src]
        node.continues += 1
        node.successors[dst] += 1
        self._nodes[dst].growth.add(max(growth, 0.0))
        self._pooled["growth"].add(max(growth, 0.0))
        tool = node_tool(dst)
        self._tools[tool].add(duration)
        self._all_tools.add(duration)
        self._touch()

    def observe_end(self, src: str, *, record: bool = True) -> None:
        """The workflow ended after a call at ``src``."""
        if record and self.sink is not None:
            self.sink(Observation(self.agent, "end", src, tenant=self.tenant))
        self._nodes[src].ends += 1
        self.ends += 1
        self._touch()

    def observe_output(self, node: str, tokens: int, *, record: bool = True) -> None:
        if record and self.sink is not None:
            self.sink(Observation(self.agent, "output", node, tokens=tokens,
                                  tenant=self.tenant))
        self._nodes[node].output.add(float(tokens))
        self._pooled["output"].add(float(tokens))
        self._touch()

    def _touch(self) -> None:
        self.observations += 1
        self._stale += 1
        self._pooled_continues.clear()
        self._pooled_nexts.clear()
        self._nexts.clear()
        # After n observations one more moves an estimate by O(1/n): a refresh point at
        # the first observation, then every `refresh_every` while the graph is young, then
        # every n/64, so the cost per decision falls as the graph settles. The points
        # depend on the observations only (never on reads): the estimates are a function
        # of what was observed, whoever read what in between.
        due = max(self.config.refresh_every, self.observations // 64)
        if self._stale >= due or self._settled is None:
            self._settled = self._copy()
            self._stale = 0

    def _copy(self) -> AgentGraph:
        """What this graph has learned, as a graph of its own that observes nothing more
        (no sink; its estimates, solved and cached lazily, are then final)."""
        twin = AgentGraph(self.config, self.agent, None, self.tenant)
        for key, node in self._nodes.items():
            twin._nodes[key] = _Node(
                node.ends, node.continues, defaultdict(int, node.successors),
                Mean(node.output.n, node.output.total), Mean(node.growth.n, node.growth.total),
            )
        for tool, fit in self._tools.items():
            twin._tools[tool] = LogNormalFit(fit.n, fit.mean, fit.m2)
        fit = self._all_tools
        twin._all_tools = LogNormalFit(fit.n, fit.mean, fit.m2)
        twin._pooled = {k: Mean(m.n, m.total) for k, m in self._pooled.items()}
        twin.observations, twin.ends = self.observations, self.ends
        twin._stale = 0
        return twin

    # ---- estimates -------------------------------------------------------------------
    def p_continue(self, node: str) -> float:
        cfg = self.config
        w = cfg.prior_weight
        pooled = self._pooled_continue(node_bucket(node))
        own = self._nodes.get(node)
        k, n = (own.continues, own.outcomes) if own is not None else (0, 0)
        p = (k + w * pooled) / (n + w) if n + w > 0 else pooled
        return min(p, cfg.max_continue)

    def _pooled_continue(self, bucket: int) -> float:
        cached = self._pooled_continues.get(bucket)
        if cached is None:
            cached = self._pooled_continues[bucket] = self._pool_continue(bucket)
        return cached

    def _pool_continue(self, bucket: int) -> float:
        cfg = self.config
        k = n = 0
        for key, node in self._nodes.items():
            if node_bucket(key) == bucket:
                k += node.continues
                n += node.outcomes
        w = cfg.prior_weight
        return (k + w * cfg.prior_continue) / (n + w) if n + w > 0 else cfg.prior_continue

    def successors(self, node: str) -> dict[str, float]:
        """P(next call site | the workflow continues after a call at ``node``).

        (Kept until the next observation: callers only read it.)"""
        cached = self._nexts.get(node)
        if cached is None:
            cached = self._nexts[node] = self._successors(node)
        return cached

    def returns_after(self, tool: str) -> int:
        """Calls seen to follow a ``tool`` step (for ``human``: users seen to come back)."""
        fit = self._tools.get(tool)
        return fit.n if fit is not None else 0

    def knows_successors(self, node: str) -> bool:
        """Whether a call after a call at ``node``'s depth has been seen (else
        :meth:`successors` is only the memoryless placeholder)."""
        return bool(self._pooled_successors(node_bucket(node)))

    def _successors(self, node: str) -> dict[str, float]:
        own = self._nodes.get(node)
        pooled = self._pooled_successors(node_bucket(node))
        if not pooled:
            return {node: 1.0}  # nothing learned: memoryless self-loop
        w = self.config.prior_weight
        k = own.continues if own is not None else 0
        if k == 0:
            return pooled
        out = {dst: w * p / (k + w) for dst, p in pooled.items()}
        assert own is not None
        for dst, c in own.successors.items():
            out[dst] = out.get(dst, 0.0) + c / (k + w)
        return out

    def _pooled_successors(self, bucket: int) -> dict[str, float]:
        """(Kept until the next observation: callers only read it.)"""
        cached = self._pooled_nexts.get(bucket)
        if cached is None:
            cached = self._pooled_nexts[bucket] = self._pool_successors(bucket)
        return cached

    def _pool_successors(self, bucket: int) -> dict[str, float]:
        counts: dict[str, int] = defaultdict(int)
        for key, node in self._nodes.items():
            if node_bucket(key) == bucket:
                for dst, c in node.successors.items():
                    counts[dst] += c
        total = sum(counts.values())
        return {dst: c / total for dst, c in sorted(counts.items())} if total else {}

    def duration(self, tool: str) -> LogNormal:
        """Fitted tool-duration distribution, falling back to pooled, then the prior."""
        cfg = self.config
        for fit in (self._tools.get(tool), self._all_tools):
            if fit is not None and fit.n >= max(cfg.min_samples, 2):
                return LogNormal(fit.mean, max(fit.sigma, 0.05))
        return LogNormal(math.log(cfg.prior_tool_median), cfg.prior_tool_sigma)

    def _gap(self, node: str) -> Gap:
        by_tool: dict[str, float] = defaultdict(float)
        for dst, p in self.successors(node).items():
            by_tool[node_tool(dst)] += p
        mixture = tuple((p, self.duration(tool)) for tool, p in sorted(by_tool.items()))
        return Gap(self.p_continue(node), mixture)

    def output_tokens(self, node: str) -> float:
        cfg = self.config
        return self._node_mean(node, "output", cfg.prior_output_tokens)

    def growth_tokens(self, node: str) -> float:
        return self._node_mean(node, "growth", self.config.prior_growth_tokens)

    def _node_mean(self, node: str, attr: str, prior: float) -> float:
        w = self.config.prior_weight
        base = self._pooled[attr].smoothed(prior, w)
        own = self._nodes.get(node)
        return getattr(own, attr).smoothed(base, w) if own is not None else base

    # ---- remaining work and gaps, as of the last refresh point ----------------------------
    def remaining(self, node: str) -> tuple[float, float]:
        """Expected (calls, tokens) still to come after a call at ``node`` finishes, as
        the graph stood at its last refresh point.

        Tokens count what the engine must process: appended prompt tokens and output.
        """
        settled = self._settled or self
        values = settled._values
        if values is None:
            values = settled._values = settled.expected_remaining()
        value = values.get(node)
        if value is None:  # unseen node: the memoryless closed form of its estimates
            c = settled.p_continue(node)
            per_call = settled.growth_tokens(node) + settled.output_tokens(node)
            return c / (1 - c), c / (1 - c) * per_call
        return value

    def gap(self, node: str) -> Gap:
        """What follows a call at ``node``, as the graph stood at its last refresh point
        (kept until the next: retention asks it of every call that finishes)."""
        settled = self._settled or self
        cached = settled._gaps.get(node)
        if cached is None:
            cached = settled._gaps[node] = settled._gap(node)
        return cached

    def snapshot(self) -> dict[str, object]:
        """What the graph has learned, as plain data (for `saga graph show` and reports):
        call sites with their counts and predictions, and edges with probabilities."""
        nodes: dict[str, dict[str, float]] = {}
        edges: list[dict[str, object]] = []
        for key in sorted(self._nodes):
            node = self._nodes[key]
            calls, tokens = self.remaining(key)
            nodes[key] = {
                "calls": float(node.outcomes),
                "p_continue": self.p_continue(key),
                "output_tokens": self.output_tokens(key),
                "growth_tokens": self.growth_tokens(key),
                "remaining_calls": calls,
                "remaining_tokens": tokens,
            }
            for dst, count in sorted(node.successors.items()):
                edges.append(
                    {"src": key, "dst": dst, "count": count,
                     "p": count / node.outcomes if node.outcomes else 0.0}
                )
        tools = {
            tool: {"n": float(fit.n), "median_s": self.duration(tool).quantile(0.5)}
            for tool, fit in sorted(self._tools.items())
        }
        return {"nodes": nodes, "edges": edges, "tools": tools}

    def expected_remaining(self) -> dict[str, tuple[float, float]]:
        """Solve V(X) = p(X) * sum_Y q(Y|X) * (r(Y) + V(Y)) for calls (r = 1) and tokens
        (r = appended prompt + output tokens), for every node seen, on the estimates as
        they are now.

        A linear system, (I - A) V = A r with A[X, Y] = p(X) q(Y|X), solved exactly (not
        iterated from the last solution: the answer is that of the estimates alone); it is
        regular because every p(X) <= max_continue < 1.
        """
        nodes = set(self._nodes)
        for x in list(nodes):
            nodes.update(self.successors(x))
        order = sorted(nodes)
        if not order:
            return {}
        index = {x: i for i, x in enumerate(order)}
        a = np.zeros((len(order), len(order)))
        for x in order:
            cont = self.p_continue(x)
            for y, q in self.successors(x).items():
                a[index[x], index[y]] += cont * q
        reward = np.array(
            [[1.0, self.growth_tokens(x) + self.output_tokens(x)] for x in order]
        )
        v = np.linalg.solve(np.eye(len(order)) - a, a @ reward)
        return {x: (float(v[i, 0]), float(v[i, 1])) for i, x in enumerate(order)}


class GraphStore:
    """One graph per (tenant, agent type), created on first sight.

    Graphs are per tenant: agent names are the clients' to choose, so one tenant's
    calls under another's agent name learn a graph of their own and never change
    the other's estimates (tenants meet only in the capacity fair share divides).

    ``sink`` (see :meth:`set_sink`) receives every observation the graphs learn;
    :meth:`apply` learns observations that came from elsewhere."""

    def __init__(self, config: SagaConfig, sink: ObservationSink | None = None) -> None:
        self.config = config
        self._graphs: dict[tuple[str, str], AgentGraph] = {}
        self._sink = sink
        # with the graph switched off every agent shares one graph that never learns
        self._frozen = AgentGraph(config)

    def get(self, agent: str, tenant: str = "") -> AgentGraph:
        if not self.config.graph:
            return self._frozen
        key = (tenant, agent)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = AgentGraph(self.config, agent, self._sink, tenant)
        return graph

    def set_sink(self, sink: ObservationSink | None) -> None:
        """Pass every observation learned from now on to ``sink`` (None: to nothing)."""
        self._sink = sink
        for graph in self._graphs.values():
            graph.sink = sink

    def apply(self, observations: Iterable[Observation]) -> int:
        """Learn observations made elsewhere, in order; return how many were learned.

        They are not passed to the sink: what came from elsewhere is not sent back.
        A store that does not learn (``graph = false``) ignores them."""
        if not self.learning:
            return 0
        count = 0
        for obs in observations:
            graph = self.get(obs.agent, obs.tenant)
            if obs.kind == "transition":
                graph.observe_transition(obs.node, obs.dst, obs.duration, obs.growth,
                                         record=False)
            elif obs.kind == "end":
                graph.observe_end(obs.node, record=False)
            else:
                graph.observe_output(obs.node, obs.tokens, record=False)
            count += 1
        return count

    @property
    def learning(self) -> bool:
        return self.config.graph

    def snapshot(self) -> dict[str, object]:
        """Every learned graph (see :meth:`AgentGraph.snapshot`), under ``TENANT/AGENT``
        (the agent alone for tenant "")."""
        return {graph_label(tenant, agent): g.snapshot()
                for (tenant, agent), g in sorted(self._graphs.items())}


def graph_label(tenant: str, agent: str) -> str:
    """How a (tenant, agent) graph is named in snapshots."""
    return f"{tenant}/{agent}" if tenant else agent
