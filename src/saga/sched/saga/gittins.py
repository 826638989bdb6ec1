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

On the empirical distribution the minimum is at a residual of one of the surviving
samples, so :func:`rank` scans them once over prefix sums (O(survivors)).
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque


def rank(sizes: list[float], prefix: list[float], attained: float) -> float | None:
    """The rank of a session that received ``attained`` seconds, given the sorted session
    lengths ``sizes`` and ``prefix[i] = sum(sizes[:i])``; None when no learned session
    was longer (the distribution says nothing about such a session)."""
    start = bisect_right(sizes, attained)
    survivors = len(sizes) - start
    best: float | None = None
    for k in range(1, survivors + 1):
        size = sizes[start + k - 1]
        # q = size - attained: the k shortest survivors end within q, the rest run q more
        invested = prefix[start + k] - prefix[start] - k * attained
        invested += (survivors - k) * (size - attained)
        ratio = invested / k
        if best is None or ratio < best:
            best = ratio
    return best


class SessionLengths:
    """The last ``window`` session lengths seen to end, per agent type, kept sorted."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._arrived: dict[tuple[str, str], deque[float]] = {}
        self._sorted: dict[tuple[str, str], list[float]] = {}
        self._prefix: dict[tuple[str, str], list[float] | None] = {}

    def observe(self, key: tuple[str, str], length: float) -> None:
        """A session of agent type ``key`` (tenant, agent) ended after ``length`` seconds."""
        arrived = self._arrived.setdefault(key, deque())
        ordered = self._sorted.setdefault(key, [])
        if len(arrived) == self.window:  # the window slides: the oldest length leaves
            gone = arrived.popleft()
            del ordered[bisect_right(ordered, gone) - 1]
        arrived.append(length)
        insort(ordered, length)
        self._prefix[key] = None  # rebuilt on the next rank

    def seen(self, key: tuple[str, str]) -> int:
        """Sessions of ``key`` in the window."""
        return len(self._sorted.get(key, ()))

    def rank(self, key: tuple[str, str], attained: float) -> float | None:
        """:func:`rank` over ``key``'s window; None if it holds no longer session."""
        ordered = self._sorted.get(key)
        if not ordered:
            return None
        prefix = self._prefix.get(key)
        if prefix is None:
            prefix = [0.0]
            for size in ordered:
                prefix.append(prefix[-1] + size)
            self._prefix[key] = prefix
        return rank(ordered, prefix, attained)
