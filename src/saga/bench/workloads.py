"""The workflows of a scenario's workload: a registry workload, or a canonical trace file
whose arrivals may be re-timed as a Poisson process.

Re-timing keeps every workflow as it is (calls, prompts, think times) and only moves its
start: the i-th workflow in trace order (by arrival, then id) starts at the i-th arrival of
a Poisson process drawn from ``numpy.random.default_rng(seed)``. The same seed gives the
same arrivals at every rate up to scale, so a capacity search compares rates on the same
workflows in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from saga.bench.scenario import WorkloadSpec
from saga.core.trace import read_trace
from saga.core.workflow import Workflow
from saga.errors import UserError
from saga.workloads import arrivals, build_workload


def retime(workflows: Sequence[Workflow], rate: float, seed: int) -> list[Workflow]:
    """``workflows`` in their order (arrival, id), arriving as a Poisson process of
    ``rate`` per second from 0, drawn with ``seed``."""
    ordered = sorted(workflows, key=lambda w: (w.arrival, w.id))
    times = arrivals.poisson(np.random.default_rng(seed), rate, count=len(ordered))
    return [w.with_arrival(float(t)) for w, t in zip(ordered, times, strict=True)]


def build_spec(
    workload: WorkloadSpec,
    seed: int,
    overrides: Mapping[str, str],
    context_window: int | None = None,
) -> tuple[list[Workflow], int | None]:
    """The workflows of ``workload`` for ``seed`` and its closed-loop concurrency (None:
    open loop). ``overrides`` are registry params; a trace file takes ``rate`` (re-time),
    ``concurrency`` (closed loop) and ``count`` or ``limit`` (keep the first N).
    ``context_window``: the serving model's, for workloads whose client keeps its prompts
    within it (see :func:`saga.workloads.build_workload`); a trace is taken as it is."""
    if workload.trace is None:
        params = {**workload.string_params(), **overrides}
        built = build_workload(
            workload.name, seed=seed, params=params, context_window=context_window
        )
        return list(built.workflows), built.closed_loop
    unknown = set(overrides) - {"rate", "concurrency", "count", "limit", "duration"}
    if unknown:
        raise UserError(f"trace {workload.trace}: cannot set {', '.join(sorted(unknown))}")
    path = Path(workload.trace).expanduser()
    if not path.exists():
        raise UserError(f"trace file not found: {path}")
    workflows = sorted(read_trace(path), key=lambda w: (w.arrival, w.id))
    if not workflows:
        raise UserError(f"trace {path} holds no workflows")
    keep = overrides.get("count") or overrides.get("limit")
    if keep is not None:
        workflows = workflows[: int(keep)]
    rate = float(overrides["rate"]) if "rate" in overrides else workload.rate
    if rate is not None:
        workflows = retime(workflows, rate, seed)
    concurrency = overrides.get("concurrency")
    return workflows, int(concurrency) if concurrency is not None else None
