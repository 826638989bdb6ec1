"""SLO admission: defer best-effort work first, then queue or reject interactive work.

Interactive workflows carry a TCT SLO as a slowdown factor. The predicted slowdown
of new interactive work is a time-decayed moving average of the slowdowns observed by
interactive calls (latency plus the tool gap before the call, over the call's ideal
latency plus that gap), raised to the slowdown the interactive work queued ahead
implies. Best-effort calls are left out of both: under Agent Fair Share a flooding
best-effort tenant is served after the interactive ones, so its queueing predicts
nothing about theirs (counting it made admission turn interactive work away exactly
when a flood arrived). Rules, in order:

1. No interactive work in sight: admit.
2. A best-effort workflow (no SLO) is deferred while the prediction is at least
   ``defer_best_effort_at`` x the tightest active SLO, for at most
   ``max_defer_best_effort`` seconds (then it is admitted: deferral never starves).
3. An interactive workflow whose SLO the prediction breaks is queued (deferred) for
   at most ``max_queue`` seconds, then rejected with the reason.
"""

from __future__ import annotations

import math

from saga.sched.decisions import ADMIT, Admission
from saga.sched.policy import WorkflowInfo
from saga.sched.saga.config import SagaConfig


class SlowdownTracker:
    """Exponentially time-decayed mean of slowdown samples (half-life in seconds)."""

    def __init__(self, halflife: float) -> None:
        self.halflife = halflife
        self._sum = 0.0
        self._weight = 0.0
        self._at = 0.0

    def add(self, slowdown: float, now: float) -> None:
        self._decay(now)
        self._sum += slowdown
        self._weight += 1.0

    def value(self, now: float) -> float:
        self._decay(now)
        return self._sum / self._weight if self._weight > 1e-9 else 1.0

    def _decay(self, now: float) -> None:
        if now > self._at:
            factor = math.pow(0.5, (now - self._at) / self.halflife)
            self._sum *= factor
            self._weight *= factor
            self._at = now


def decide(
    workflow: WorkflowInfo,
    now: float,
    predicted: float,
    active_slos: list[float],
    config: SagaConfig,
) -> Admission:
    """Admission of ``workflow`` given the predicted slowdown of new work."""
    slos = [*active_slos, *([workflow.slo] if workflow.slo is not None else [])]
    if not slos:
        return ADMIT
    tightest = min(slos)
    waited = now - workflow.arrival
    if workflow.slo is None:
        limit = config.defer_best_effort_at * tightest
        if predicted >= limit and waited < config.max_defer_best_effort:
            return Admission(
                "defer",
                f"best effort deferred: predicted slowdown {predicted:.2f} >= "
                f"{limit:.2f} ({config.defer_best_effort_at:g} x interactive SLO {tightest:g})",
                config.retry_after,
            )
        return ADMIT
    if predicted <= workflow.slo:
        return ADMIT
    reason = f"predicted slowdown {predicted:.2f} exceeds the SLO {workflow.slo:g}"
    if waited < config.max_queue:
        return Admission("defer", f"queued: {reason}", config.retry_after)
    return Admission("reject", f"rejected: {reason} after {waited:.0f} s in the admission queue")
