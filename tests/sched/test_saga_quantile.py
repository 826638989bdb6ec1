"""A gap's quantiles: the bisection that skips the midpoints a proved bracket decides
gives, bit for bit, what the bisection that evaluates all forty gives."""

from __future__ import annotations

import math
import random

import pytest

from saga.sched.saga.graph import Gap, LogNormal
from saga.sched.saga.quantile import MARGIN, bisect, bracket
from saga.sched.saga.retention import TTL_QUANTILES

QUANTILES = (0.2, *TTL_QUANTILES)  # retention's TTLs and its default prefetch quantile


def _evaluate_all(gap: Gap, q: float) -> float:
    """Gap._quantile before the bracket: every midpoint evaluated."""
    lo, hi = math.log(1e-3), math.log(1e6)
    for _ in range(40):
        mid = (lo + hi) / 2
        if gap.cdf(math.exp(mid)) < q:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def _mixture(rng: random.Random, narrow: bool = False) -> Gap:
    k = rng.randint(2, 5)
    weights = [rng.random() for _ in range(k)]
    total = sum(weights)
    parts = []
    for w in weights:
        sigma = rng.choice((1e-4, 0.005)) if narrow and not parts else rng.uniform(0.05, 3.0)
        parts.append((w / total, LogNormal(rng.uniform(-4.0, 9.0), sigma)))
    return Gap(rng.uniform(0.1, 0.99), tuple(parts))


@pytest.mark.parametrize("narrow", [False, True])
def test_quantiles_are_bit_for_bit_those_of_the_full_bisection(narrow: bool) -> None:
    rng = random.Random(21 + narrow)
    for _ in range(300):
        gap = _mixture(rng, narrow)
        reference = Gap(gap.p_continue, gap.mixture)
        for q in (*QUANTILES, rng.uniform(0.01, 0.999)):
            assert gap.quantile(q) == _evaluate_all(reference, q)


def test_far_apart_modes_and_a_flat_cdf_between_them() -> None:
    # between the modes the CDF sits at 0.5 for decades of t: the median is anywhere there
    gap = Gap(0.9, ((0.5, LogNormal(math.log(0.01), 0.05)),
                    (0.5, LogNormal(math.log(5e4), 0.05))))
    for q in (0.25, 0.4999, 0.5, 0.5001, 0.75, 0.99):
        assert gap.quantile(q) == _evaluate_all(Gap(gap.p_continue, gap.mixture), q)


def test_a_proved_bracket_holds_the_quantile_and_saves_evaluations() -> None:
    gap = Gap(0.8, ((0.6, LogNormal(math.log(2.0), 0.7)), (0.4, LogNormal(math.log(30.0), 1.2))))
    calls: list[float] = []

    def cdf_at(x: float) -> float:
        calls.append(x)
        return gap.cdf(math.exp(x))

    for q in QUANTILES:
        calls.clear()
        a, b = bracket(gap._parts, q, cdf_at)
        assert math.isfinite(a) and math.isfinite(b) and a < b
        assert gap.cdf(math.exp(a)) < q - MARGIN and gap.cdf(math.exp(b)) > q + MARGIN
        assert len(calls) == 2  # the ends are checked as the bisection evaluates them
        calls.clear()
        assert bisect(q, cdf_at, a, b) == _evaluate_all(gap, q)
        assert len(calls) < 15  # against 40 for the bisection alone


def test_no_bracket_where_it_cannot_be_proved() -> None:
    def never(x: float) -> float:
        raise AssertionError("not evaluated")

    narrow = ((0.5, 0.0, 1e-3), (0.5, 1.0, 0.5))  # a component under MIN_SIGMA
    assert bracket(narrow, 0.5, never) == (-math.inf, math.inf)
    assert bracket(((1.0, 0.0, 1.0),), 1.0, never) == (-math.inf, math.inf)  # q = 1
    # a side whose check fails is dropped: a CDF that never reaches q + MARGIN above
    low = bracket(((1.0, 0.0, 1.0),), 0.5, lambda x: 0.5 - 1.0 if x < 0 else 0.5)
    assert math.isfinite(low[0]) and low[1] == math.inf
