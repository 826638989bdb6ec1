"""A Gittins-like queue rank from the learned distribution of session lengths.

A session's length here is the work it received in all (the predicted GPU seconds Agent
Fair Share charged its calls, as a gateway counts them), learned per agent type from the
sessions the gateway saw end: by the client's end marker, the graph's terminal node or
the idle timeout (``on_workflow_finished``), never from the simulator's true end.

For a session that has received ``a`` seconds, with total length X drawn from the
learned distribution, the rank is the least expected work to invest per chance of
finishing (the reciprocal of the Gittins index of the M/G/1 queue with known attained
service; Gittins, Glazebrook and Weber, *Multi-armed Bandit Allocation Indices*):

    rank(a) = min over q > 0 of E[min(X - a, q) | X > a] / P(X - a <= q | X > a).

Smaller is served first. Under a decreasing hazard (heavy-tailed lengths: the longer a
session ran, the less likely it ends soon) the rank grows with ``a`` and the order is
least attained first; under an increasing hazard (lengths alike) the best q is the whole
residual, the rank is the expected remaining work, which falls with ``a``, and the
oldest session goes first, near first come first served. One learned rule, where a fixed
order wins only one of the two.

The distribution is the Kaplan-Meier estimate over the last ``window`` lengths seen to
end and, censored, the work received so far by the sessions still running: the sessions
that end first are the short ones, so lengths learned from ended sessions alone miss the
long tail of a heavy-tailed agent (its longest sessions may run for the whole window).
The mass Kaplan-Meier leaves beyond the last ended length (a session that ran longer than
every ended one) is taken as never ending within any q: it adds q to the expected work
and nothing to the chance of finishing. On this discrete distribution the minimum over q
is at the residual of one of the surviving lengths, so :func:`rank` scans them once over
prefix sums (O(survivors)).

Where the rank's order helps depends on that shape: least attained first pays where
lengths are heavy-tailed, and where they are alike the graph's expected remaining work
knows more than the attained work does. :func:`heavy_tailed` tells the two apart by the
squared coefficient of variation of the estimate (above 1, the exponential's; a decreasing
hazard has at least that, an increasing one at most), which
``queue_order = "gittins_heavy_tailed"`` reads to rank only the heavy-tailed agent types.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lengths:
    """A discrete distribution of session lengths: sorted ``points`` with probability
    ``mass`` each, ``tail`` beyond the last point, and prefix sums for :func:`rank`."""

    points: tuple[float, ...]
    mass_prefix: tuple[float, ...]  # [i]: the mass of points[:i]
    work_prefix: tuple[float, ...]  # [i]: the sum of mass x length over points[:i]
    tail: float
    #: the longest running session's work so far (the least the tail runs); 0: none
    tail_at: float = 0.0

    @staticmethod
    def of(points: list[float], masses: list[float], tail: float,
           tail_at: float = 0.0) -> Lengths:
        mass, work = [0.0], [0.0]
        for point, m in zip(points, masses, strict=True):
            mass.append(mass[-1] + m)
            work.append(work[-1] + m * point)
        return Lengths(tuple(points), tuple(mass), tuple(work), tail, tail_at)


def kaplan_meier(ended: list[float], running: Iterable[float]) -> Lengths:
    """The Kaplan-Meier estimate from the sorted lengths ``ended`` and the work received
    by the sessions still ``running`` (censored: each will run at least that long)."""
    # at equal values an end is counted before a censoring, as the estimator's convention
    marks = sorted([(x, 0) for x in ended] + [(x, 1) for x in running])
    at_risk, survival = len(marks), 1.0
    points: list[float] = []
    masses: list[float] = []
    for value, censored in marks:
        if not censored:
            mass = survival / at_risk
            points.append(value)
            masses.append(mass)
            survival -= mass
        at_risk -= 1
    if marks and marks[-1][1]:
        return Lengths.of(points, masses, survival, marks[-1][0])
    return Lengths.of(points, masses, 0.0)


def squared_cv(lengths: Lengths) -> float | None:
    """The squared coefficient of variation (variance over the squared mean) of the
    lengths, the mass beyond the last ended length put at ``tail_at``, the least the
    longest running session will run (left out, the tail's long sessions would be missed
    exactly where the lengths are heavy-tailed); None without mass on a positive mean."""
    points, mass = lengths.points, lengths.mass_prefix
    tail = lengths.tail if lengths.tail_at > 0.0 else 0.0
    total = mass[-1] + tail
    if total <= 0.0:
        return None
    mean = (lengths.work_prefix[-1] + tail * lengths.tail_at) / total
    if mean <= 0.0:
        return None
    second = (sum((mass[i + 1] - mass[i]) * x * x for i, x in enumerate(points))
              + tail * lengths.tail_at ** 2) / total
    return max(second - mean * mean, 0.0) / (mean * mean)


def heavy_tailed(lengths: Lengths) -> bool:
    """Whether the lengths vary more than an exponential's (squared CV above 1). A
    decreasing hazard (the longer a session ran, the less likely it ends soon) has a
    squared CV of at least 1, an increasing one at most 1 (Barlow and Proschan): above
    1, the rank's least-attained-first order is the one the lengths call for."""
    found = squared_cv(lengths)
    return found is not None and found > 1.0


def rank(lengths: Lengths, attained: float) -> float | None:
    """The rank of a session that received ``attained`` seconds under ``lengths``; None
    when no ended length was longer (the estimate says nothing of when it ends). Of equal
    ratios the first, the shorter quantum, is kept."""
    points, mass, work = lengths.points, lengths.mass_prefix, lengths.work_prefix
    start = bisect_right(points, attained)
    alive = mass[-1] - mass[start] + lengths.tail  # P(X > attained), unnormalized
    best: float | None = None
    for j in range(start, len(points)):
        ended = mass[j + 1] - mass[start]  # P(attained < X <= points[j])
        if ended <= 0.0:
            continue
        # q = points[j] - attained: the sessions that end within q run their residual,
        # the others run q; per chance of ending within q
        residual = points[j] - attained
        invested = work[j + 1] - work[start] - attained * ended + (alive - ended) * residual
        ratio = invested / ended
        if best is None or ratio < best:
            best = ratio
    return best


class SessionLengths:
    """The last ``window`` session lengths seen to end, per agent type, and the
    Kaplan-Meier estimate refitted at each end with the running sessions censored."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._arrived: dict[tuple[str, str], deque[float]] = {}
        self._sorted: dict[tuple[str, str], list[float]] = {}
        self._fitted: dict[tuple[str, str], Lengths] = {}
        self._heavy: dict[tuple[str, str], bool] = {}

    def observe(self, key: tuple[str, str], length: float,
                running: Iterable[float] = ()) -> None:
        """A session of agent type ``key`` (tenant, agent) ended after ``length`` seconds;
        ``running``: the work received so far by its agent type's sessions in progress."""
        arrived = self._arrived.setdefault(key, deque())
        ordered = self._sorted.setdefault(key, [])
        if len(arrived) == self.window:  # the window slides: the oldest length leaves
            gone = arrived.popleft()
            del ordered[bisect_right(ordered, gone) - 1]
        arrived.append(length)
        insort(ordered, length)
        fitted = self._fitted[key] = kaplan_meier(ordered, running)
        self._heavy[key] = heavy_tailed(fitted)

    def seen(self, key: tuple[str, str]) -> int:
        """Sessions of ``key`` in the window."""
        return len(self._sorted.get(key, ()))

    def heavy_tailed(self, key: tuple[str, str]) -> bool:
        """:func:`heavy_tailed` of ``key``'s estimate at its last refit (False unfitted)."""
        return self._heavy.get(key, False)

    def rank(self, key: tuple[str, str], attained: float) -> float | None:
        """:func:`rank` under ``key``'s estimate; None if nothing is known past ``attained``."""
        fitted = self._fitted.get(key)
        return None if fitted is None else rank(fitted, attained)
