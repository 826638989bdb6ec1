"""The winner's curse of a steal: a margin that grows with the replicas compared.

A steal compares home's predicted completion with the best of the other candidates'. Each
prediction is noisy, and the least of k noisy predictions is biased low: with k = 15
rivals and a relative error of spread sigma, the best rival looks about ``1.74 sigma``
faster than it will be though no rival is faster at all. A flat margin that is right on
two replicas (one rival, no bias) then steals too often on sixteen.

The noise is measured, not assumed: a gateway sees when each call it placed ends, so it
can compare that with the completion it predicted. Only the part of the error a replica
causes matters here (an error every candidate shares, such as the output length, moves
home and rivals alike and selects nothing), so the prediction is re-priced once the call
has ended with the output tokens it produced (what the gateway counted in the response),
and the spread of log(actual / re-priced prediction) is the sigma the margin uses.

:func:`steal_share` is the rule, :class:`PredictionNoise` the measurement.
"""

from __future__ import annotations

import math
from functools import lru_cache

#: observations before the measured spread is used (until then: no correction)
MIN_SAMPLES = 32
#: log ratios are clipped to this many e-folds (a call stuck behind a preemption is one
#: observation, not a verdict on every prediction)
CLIP = 3.0


@lru_cache(maxsize=256)
def expected_max_normal(k: int) -> float:
    """E[max of k independent standard normals] (0 for k <= 1): the integral of
    ``x k phi(x) Phi(x)^(k-1)`` over [-10, 10] by the midpoint rule, 8,000 steps (exact
    to 1e-9 for k up to hundreds; closed forms: k = 2 gives 1/sqrt(pi), k = 3 gives
    3/(2 sqrt(pi)))."""
    if k <= 1:
        return 0.0
    steps, lo, hi = 8000, -10.0, 10.0
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps):
        x = lo + (i + 0.5) * h
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
        total += x * k * pdf * cdf ** (k - 1)
    return total * h


def steal_share(margin: float, sigma: float, rivals: int) -> float:
    """The share of home's completion a rival must beat it by to steal, when the best of
    ``rivals`` predictions with log-error spread ``sigma`` is compared with home's.

    The best rival's prediction is expected ``sigma * expected_max_normal(rivals)`` e-folds
    below its truth, so a steal needs ``best < stay * (1 - margin) * exp(-that)``: the share
    is ``1 - (1 - margin) * exp(-sigma * expected_max_normal(rivals))``. One rival (two
    replicas) or sigma 0 gives ``margin`` itself, exactly; for a margin below 1 and any
    spread :class:`PredictionNoise` can measure (at most :data:`CLIP`) the share stays
    below 1: a steal is never ruled out outright."""
    bias = sigma * expected_max_normal(rivals)
    if bias <= 0.0:
        return margin
    return 1.0 - (1.0 - margin) * math.exp(-bias)


class PredictionNoise:
    """The spread of log(actual / predicted) completion of the calls placed, as an
    exponential moving mean and variance over about ``window`` calls."""

    def __init__(self, window: int) -> None:
        self.alpha = 1.0 / max(window, 1)
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def observe(self, actual: float, predicted: float) -> None:
        """One call: it ended ``actual`` seconds after it was placed, predicted at
        ``predicted`` (re-priced with its real output). Non-positive ones are skipped."""
        if actual <= 0.0 or predicted <= 0.0:
            return
        x = max(-CLIP, min(CLIP, math.log(actual / predicted)))
        self.count += 1
        if self.count == 1:
            self.mean = x
            return
        a = self.alpha if self.count > 1.0 / self.alpha else 1.0 / self.count
        delta = x - self.mean
        self.mean += a * delta
        self.var = (1.0 - a) * (self.var + a * delta * delta)

    @property
    def sigma(self) -> float:
        """The spread measured, 0 until :data:`MIN_SAMPLES` calls have been seen."""
        return math.sqrt(self.var) if self.count >= MIN_SAMPLES else 0.0
