"""The bisection behind a gap's quantiles, and the midpoints it may decide unevaluated.

:meth:`~saga.sched.saga.graph.Gap.quantile` bisects log t over [log 1e-3, log 1e6],
``STEPS`` times, asking the gap's mixture CDF at each midpoint whether it is below q.
Its answers are the TTLs retention pins by and the instants it prefetches at, so they
must not move by a bit; but retention asks five or six of them of every gap the graph
rebuilds, and the CDF (a log and an erf per component) at 40 midpoints each was the
largest cost of the policy's retention.

:func:`bracket` finds, by a few safeguarded Newton steps on the mixture's CDF in log t,
two points ``a < x_q < b`` at which the CDF as :meth:`Gap.cdf` computes it is below
``q - MARGIN`` and above ``q + MARGIN``. The bisection then takes a midpoint at or below
``a`` as below q, and one at or above ``b`` as not, without evaluating it, and
evaluates only the midpoints between (about the last seven of its forty). That is the
branch an evaluation would take, because

* the exact CDF of a mixture with non-negative weights never decreases in t, and
* the computed one is within ``ERROR_BOUND`` of the exact one at every t (it is a sum
  of a few terms each rounded a few times; the largest error is the argument of erf,
  ``(log t - mu) / sigma``, whose rounding is amplified by 1 / sigma, so components
  narrower than ``MIN_SIGMA`` get no bracket), with ``2 * ERROR_BOUND < MARGIN``:

a midpoint m <= a has CDF(m) <= exact(m) + err <= exact(a) + err <= CDF(a) + 2 err
< q - MARGIN + 2 err < q, and symmetrically above b. Where Newton does not converge or
a side fails its check, that side is infinite (every midpoint there is evaluated), so
a bracket can only save evaluations, never change a branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

LOG_LO = math.log(1e-3)
LOG_HI = math.log(1e6)
STEPS = 40

#: Components narrower than this (log-space deviation) get no bracket: the rounding of
#: the erf argument, (log t - mu) / sigma, grows as 1 / sigma. (The graph's fits are never
#: narrower: :meth:`AgentGraph.duration` floors them at 0.05.)
MIN_SIGMA = 0.05
#: A bound on |computed CDF - exact CDF| for components at least ``MIN_SIGMA`` wide: log t
#: from exp of the midpoint and the subtraction of mu within 6e-15 (|log t - mu| <= 30),
#: divided by sigma * sqrt(2) >= 0.07, is 9e-14 on the erf argument, times erf's slope of
#: at most 1.13 (the relative roundings of the divisions add under 1e-15, the slope
#: falling faster than the argument grows); then a few roundings of numbers <= 2 per
#: component. About 1.2e-13 in all, rounded up eightfold.
ERROR_BOUND = 1e-12
#: How far past q the CDF must be at a bracket's ends (ten times twice the error bound).
MARGIN = 2e-11
_SQRT2 = math.sqrt(2.0)
_STD_NORMAL = NormalDist()
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_NEWTON_STEPS = 30
_SETTLED = 1e-6

Parts = Sequence[tuple[float, float, float]]
"""A mixture as (weight, mu, sigma) of its log-normal components."""


def bisect(q: float, cdf_at: Callable[[float], float], below: float = -math.inf,
           above: float = math.inf) -> float:
    """The q-quantile as the bisection finds it: ``exp(hi)`` after ``STEPS`` halvings of
    [LOG_LO, LOG_HI], going up where ``cdf_at(mid) < q``; a midpoint at or below
    ``below`` is taken as below q and one at or above ``above`` as not, unevaluated."""
    lo, hi = LOG_LO, LOG_HI
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        if mid <= below:
            lo = mid
        elif mid >= above:
            hi = mid
        elif cdf_at(mid) < q:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def bracket(parts: Parts, q: float, cdf_at: Callable[[float], float]) -> tuple[float, float]:
    """(a, b) with ``cdf_at(a) < q - MARGIN`` and ``cdf_at(b) > q + MARGIN`` (log t; a side
    that could not be found or proved is -inf or inf). ``cdf_at(x)`` is the mixture's
    computed CDF at t = exp(x), as the bisection evaluates it."""
    if not 0.0 < q < 1.0 or not _bracketable(parts):
        return -math.inf, math.inf
    found = _newton(parts, q)
    if found is None:
        return -math.inf, math.inf
    x, density = found
    # wide enough that the exact CDF at the ends is about 4 margins from q: the checks
    # below pass, and the bisection evaluates only midpoints within 2 * half of x
    half = min(max(4.0 * MARGIN / density, 1e-12), 1.0)
    a, b = x - half, x + half
    if not cdf_at(a) < q - MARGIN:
        a = -math.inf
    if not cdf_at(b) > q + MARGIN:
        b = math.inf
    return a, b


def _bracketable(parts: Parts) -> bool:
    return bool(parts) and all(
        w >= 0.0 and math.isfinite(w) and math.isfinite(mu) and sigma >= MIN_SIGMA
        and math.isfinite(sigma)
        for w, mu, sigma in parts
    )


def _newton(parts: Parts, q: float) -> tuple[float, float] | None:
    """x near the exact q-quantile (log t) and the density there, by Newton steps kept
    inside the bracket the CDF values seen so far give (bisecting it when a step leaves);
    None when it does not settle."""
    weight = sum(w for w, _, _ in parts)
    if weight <= 0.0:
        return None
    z_q = _normal_quantile(q)
    x = sum(w * (mu + sigma * z_q) for w, mu, sigma in parts) / weight
    lo = min(mu - 40.0 * sigma for _, mu, sigma in parts)
    hi = max(mu + 40.0 * sigma for _, mu, sigma in parts)
    x = min(max(x, lo), hi)
    erf, exp = math.erf, math.exp
    for _ in range(_NEWTON_STEPS):
        value = density = 0.0
        for w, mu, sigma in parts:
            z = (x - mu) / sigma
            value += w * 0.5 * (1.0 + erf(z / _SQRT2))
            density += w * exp(-0.5 * z * z) * _INV_SQRT_2PI / sigma
        error = value - q
        if error < 0.0:
            lo = x
        else:
            hi = x
        step = x - error / density if density > 0.0 else math.nan
        if abs(error) < _SETTLED and lo < step < hi:
            # Newton converges quadratically: from within _SETTLED the next step lands
            # within about _SETTLED ** 2 of q (the bracket's check confirms it)
            return step, density
        x = step if lo < step < hi else (lo + hi) / 2
    return None


def _normal_quantile(q: float) -> float:
    return _STD_NORMAL.inv_cdf(q)
