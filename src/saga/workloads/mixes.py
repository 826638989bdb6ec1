"""Multi-tenant mixes: several generators, each a tenant with a weight and an SLO class.

A :class:`Component` names a generator, its parameters (as a dict) and a share of the
workflows. :func:`build_mix` draws one arrival process for the whole mix and assigns each
arrival to a component by weight, so tenants interleave as they would on a shared cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from saga.core.workflow import Workflow
from saga.workloads.generators import GENERATORS
from saga.workloads.generators.base import GeneratorParams, arrival_times


@dataclass(frozen=True)
class Component:
    """One tenant of a mix: a generator, its parameters, and its share of the workflows."""

    generator: str
    weight: float
    params: Mapping[str, object] = field(default_factory=dict)


def build_mix(components: list[Component], arrivals: GeneratorParams,
              rng: np.random.Generator) -> list[Workflow]:
    """Workflows of a mix: ``arrivals`` gives the arrival process, components share it."""
    arr_rng, pick_rng, body_rng = rng.spawn(3)
    times = arrival_times(arrivals, arr_rng)
    weights = np.asarray([c.weight for c in components], dtype=np.float64)
    picks = pick_rng.choice(len(components), size=len(times), p=weights / weights.sum())
    gens = [GENERATORS[c.generator]() for c in components]
    params = [g.Params.model_validate(dict(c.params)) for g, c in zip(gens, components,
                                                                        strict=True)]
    streams = body_rng.spawn(len(times))
    width = max(4, len(str(len(times))))
    out = []
    for i, (t, j) in enumerate(zip(times, picks, strict=True)):
        p = params[j]
        out.append(gens[j].workflow(p, streams[i], f"{p.tenant}-{i:0{width}d}", float(t)))
    return out


def agents_mix(rng: np.random.Generator) -> list[Workflow]:
    """The default small scenario: coding and browser agents, ~40 workflows over ~2 minutes.

    Sized to simulate in seconds: coding contexts capped at 30k tokens and 4-30 calls.
    """
    arr = GeneratorParams(count=40, rate=1 / 3.0)
    coding = {"tenant": "coding", "slo": 3.0, "system_tokens": 4000, "calls_scale": 0.5,
              "min_calls": 4, "max_calls": 30, "context_scale": 0.4,
              "max_prompt_tokens": 30_000, "compact_tokens": 8000, "max_gap": 60.0}
    browser = {"tenant": "browser", "slo": 3.0, "steps_median": 8.0, "max_steps": 20,
               "obs_median": 3000.0, "max_obs_tokens": 8000}
    return build_mix([Component("coding-agent", 0.5, coding),
                      Component("browser-agent", 0.5, browser)], arr, rng)


def interference_mix(rng: np.random.Generator, *, batch_share: float = 0.8,
                     rate: float = 1.0, duration: float = 300.0) -> list[Workflow]:
    """Interactive agent tenants (SLO 3.0) sharing a cluster with a tenant flooding batch work.

    Two interactive tenants run coding and browser agents; the ``batch`` tenant (best effort,
    no SLO) sends long single-call prompts in bursts (Gamma arrivals with CV 4).
    """
    agents_rng, batch_rng = rng.spawn(2)
    agent_rate = rate * (1.0 - batch_share)
    interactive = build_mix(
        [Component("coding-agent", 0.5, {"tenant": "interactive-coding", "slo": 3.0,
                                          "calls_scale": 0.5, "max_calls": 40,
                                          "max_prompt_tokens": 60_000, "max_gap": 120.0}),
         Component("browser-agent", 0.5, {"tenant": "interactive-browser", "slo": 3.0})],
        GeneratorParams(rate=agent_rate, duration=duration), agents_rng)
    batch = GENERATORS["chat"]().generate(
        GENERATORS["chat"].Params.model_validate(
            {"tenant": "batch", "agent": "batch", "slo": None, "duration": duration,
             "rate": rate * batch_share, "arrival": "gamma", "cv": 4.0,
             "prompt_scale": 4.0, "output_scale": 2.0}),
        batch_rng, prefix="batch")
    return interactive + batch
