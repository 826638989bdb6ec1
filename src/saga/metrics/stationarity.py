"""Is a run's load sustained? Its service by arrival slice, and whether it keeps degrading.

A rate a cluster sustains serves the workflows that arrive late in a run as well as those
that arrive mid-run; past it the backlog grows for as long as arrivals continue, so each
later slice of arrivals waits longer (its TCT slowdown grows) and, as the queued calls
evict each other's prefixes, finds less of its prompts cached (the prefix hit rate falls).
A capacity judged over a short window can miss that drift; these figures, taken over the
whole run, show it.

The verdict asks the goodput rule of the last slice of arrivals (its late arrivals must be
served as the rule asks of all of them) and a hit rate that has not fallen from the second
slice's; the first slice is the warm-up (an empty cluster, a cold cache) and is not compared.
The mean slowdown is shown, not judged: a few workflows that wait long move it by tenths on
the ~100 workflows of a slice, and it grows a little at any load while long workflows keep
filling the cluster (docs/engine.md, "Load definition").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from saga.sim.simulator import SimResult, WorkflowRecord


@dataclass(frozen=True)
class ArrivalSlice:
    """The workflows that arrived in ``[start, end)`` and how they were served."""

    start: float
    end: float
    workflows: int
    met: int  # finished, not rejected, TCT at most the slowdown bound times the TCT alone
    slowdown_mean: float  # over the finished workflows (NaN when none finished)
    slowdown_median: float  # the same workflows' (the upper one of an even count)
    hit_rate: float  # cached (GPU or host) prompt tokens over prompt tokens of their calls

    @property
    def attainment(self) -> float:
        """Share of the slice's workflows meeting the level (1 for an empty slice)."""
        return self.met / self.workflows if self.workflows else 1.0


def met_level(record: WorkflowRecord, alone: float, slowdown: float) -> bool:
    """True when the workflow finished, was not rejected, within ``slowdown`` x ``alone``."""
    return (record.finished_at >= 0 and not record.rejected
            and record.finished_at - record.arrival <= slowdown * alone)


def arrival_slices(
    result: SimResult,
    isolated: Mapping[str, float],
    *,
    slices: int = 4,
    slowdown: float = 2.0,
) -> list[ArrivalSlice]:
    """The run's open-loop arrival window cut into ``slices`` equal spans of time; each
    workflow counts in the span of its arrival (the last arrival in the last span)."""
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    low, high = result.arrival_window
    width = (high - low) / slices

    def index(arrival: float) -> int:
        if width <= 0:
            return 0
        return min(int((arrival - low) / width), slices - 1)

    of_workflow: dict[str, int] = {}
    counts = [0] * slices
    met = [0] * slices
    slowdowns: list[list[float]] = [[] for _ in range(slices)]
    for record in result.workflows:
        i = index(record.arrival)
        of_workflow[record.workflow] = i
        counts[i] += 1
        alone = isolated[record.workflow]
        if met_level(record, alone, slowdown):
            met[i] += 1
        if record.finished_at >= 0 and not record.rejected and alone > 0:
            slowdowns[i].append((record.finished_at - record.arrival) / alone)
    prompt = [0] * slices
    hit = [0] * slices
    for call in result.calls:
        i = of_workflow[call.workflow]
        prompt[i] += call.prompt_tokens
        hit[i] += call.cached_tokens + call.host_tokens
    return [
        ArrivalSlice(
            start=low + i * width,
            end=low + (i + 1) * width,
            workflows=counts[i],
            met=met[i],
            slowdown_mean=sum(slowdowns[i]) / len(slowdowns[i]) if slowdowns[i] else
            float("nan"),
            slowdown_median=sorted(slowdowns[i])[len(slowdowns[i]) // 2] if slowdowns[i] else
            float("nan"),
            hit_rate=hit[i] / prompt[i] if prompt[i] else 0.0,
        )
        for i in range(slices)
    ]


def drifting(
    parts: Sequence[ArrivalSlice], *, target: float = 0.9, hit_drop: float = 0.05
) -> list[str]:
    """Why the run's load is not sustained to its end (empty when it is): the last slice's
    attainment is below ``target``, or its hit rate is more than ``hit_drop`` below the
    second slice's (the first is the warm-up)."""
    if len(parts) < 3:
        raise ValueError("stationarity needs at least three slices (one is the warm-up)")
    second, last = parts[1], parts[-1]
    reasons: list[str] = []
    if last.attainment < target:
        reasons.append(f"late arrivals {100 * last.attainment:.1f} % within the level")
    if last.hit_rate < second.hit_rate - hit_drop:
        reasons.append(f"hit rate {second.hit_rate:.3f} -> {last.hit_rate:.3f}")
    return reasons
