"""What every generator shares: common parameters, arrival times, sampling helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from saga.core.workflow import Workflow
from saga.workloads import arrivals
from saga.workloads.quantiles import quantile_sample


class GeneratorParams(BaseModel):
    """Parameters common to all generators: how many workflows, when they arrive, for whom."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(20, ge=1, le=1_000_000, description="Number of workflows (ignored "
                       "when duration is set).")
    duration: float | None = Field(None, gt=0, description="If set, generate arrivals over "
                                   "this many seconds at `rate` instead of `count`.")
    rate: float = Field(0.2, gt=0, description="Mean arrivals per second.")
    arrival: Literal["poisson", "gamma", "mmpp"] = Field(
        "poisson", description="Arrival process: poisson, gamma (bursty renewal with `cv`), "
        "mmpp (two-state Markov-modulated Poisson, `burst` times the calm rate).")
    cv: float = Field(3.0, gt=0, description="gamma: coefficient of variation of the gaps.")
    burst: float = Field(8.0, ge=1, description="mmpp: burst-state rate over calm-state rate.")
    dwell: float = Field(30.0, gt=0, description="mmpp: mean seconds in each state.")
    concurrency: int | None = Field(None, ge=1, description="If set, closed loop: keep this "
                                    "many workflows in flight (arrival times are ignored).")
    tenant: str = Field("default", min_length=1, description="Tenant of every workflow.")
    slo: float | None = Field(None, ge=1.0, description="TCT SLO as a slowdown factor; "
                              "none for best effort.")
    block_tokens: int = Field(64, ge=1, le=4096, description="Tokens per KV block.")


def arrival_times(p: GeneratorParams, rng: np.random.Generator) -> arrivals.Times:
    """Arrival times for ``p``: ``count`` of them, or all within ``duration``."""
    count, duration = (None, p.duration) if p.duration is not None else (p.count, None)
    if p.arrival == "gamma":
        return arrivals.gamma(rng, p.rate, p.cv, count=count, duration=duration)
    if p.arrival == "mmpp":
        # Calm and burst rates chosen so that the long-run mean rate is `rate`.
        calm = 2.0 * p.rate / (1.0 + p.burst)
        return arrivals.mmpp(rng, (calm, calm * p.burst), p.dwell, count=count,
                             duration=duration)
    return arrivals.poisson(rng, p.rate, count=count, duration=duration)


def draw(knots: tuple[float, ...], rng: np.random.Generator, *, scale: float = 1.0,
         lo: float = 1.0, hi: float = float("inf")) -> float:
    """One sample of a quantile-knot distribution, scaled and clipped to [lo, hi]."""
    x = float(quantile_sample(knots, rng.random(1))[0]) * scale
    return min(max(x, lo), hi)


def lognormal(rng: np.random.Generator, median: float, sigma: float, *, lo: float = 1.0,
              hi: float = float("inf")) -> float:
    """One log-normal sample with the given median, clipped to [lo, hi]."""
    return min(max(float(rng.lognormal(np.log(median), sigma)), lo), hi)


class Generator(ABC):
    """One synthetic workload family: a params model and a way to make one workflow."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[GeneratorParams]]

    @abstractmethod
    def workflow(self, p: GeneratorParams, rng: np.random.Generator, wid: str,
                 arrival: float) -> Workflow:
        """Make workflow ``wid`` arriving at ``arrival``; all randomness from ``rng``."""

    def generate(self, p: GeneratorParams, rng: np.random.Generator,
                 prefix: str | None = None) -> list[Workflow]:
        """All workflows of ``p``: arrivals first, then each workflow from its own stream.

        Arrivals and bodies use separate child generators so that changing the arrival
        process does not change the workflows themselves.
        """
        arr_rng, body_rng = rng.spawn(2)
        times = arrival_times(p, arr_rng)
        streams = body_rng.spawn(len(times))
        tag = prefix or self.name
        width = max(4, len(str(len(times))))
        return [self.workflow(p, streams[i], f"{tag}-{i:0{width}d}", float(t))
                for i, t in enumerate(times)]
