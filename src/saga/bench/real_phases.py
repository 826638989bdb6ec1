"""Where each call's time went on the real benchmark, phase by phase, from the runs' records.

A run of ``saga bench real`` records, per answered call, the gateway's phases
(``phases``: saga.gateway.metrics.CallPhases: held at the door, waiting for the workflow's
previous retention step, queued for a concurrency slot of its replica, the backend's
preparation -- on llama.cpp its slot, a restore included -- and upstream, sent until the
answer was complete), the engine's own prefill and decode seconds when it reports them
(``engine_timings``: llama.cpp's ``timings``) and each retention step the backend carried
out (``retain_steps``: on llama.cpp a slot save or erase, which the workflow's next call
waits for). :func:`phases` gives each policy's mean seconds per call of every phase;
upstream less the engine's prefill and decode is the rest of upstream: the call waiting in
the engine's task queue (a slot busy, a slot action or batch before it) and HTTP. ``calls``
keeps each workflow's first calls only (cold for every policy: nothing of the workflow is
cached yet) or its later ones (where retention and routing can hit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: Which of a workflow's calls :func:`phases` averages over.
CallSelection = Literal["all", "first", "later"]

#: The gateway's phases, in the order of saga.gateway.metrics.CallPhases's fields after
#: (at, workflow, index, replica).
GATEWAY_PHASES = ("door", "retain_wait", "queue", "prepare", "upstream")


@dataclass(frozen=True)
class PhaseMeans:
    """One policy's mean seconds per call of each phase, over every run of a case."""

    policy: str
    calls: int
    door: float
    retain_wait: float
    queue: float
    prepare: float
    upstream: float
    prefill: float  # the engine's own figure (nan when it reports none)
    decode: float
    engine_wait: float  # upstream - prefill - decode: the engine's task queue and HTTP
    retain_steps: int  # retention steps carried out (saves, erases), per run
    retain_step: float  # their mean seconds


def phases(
    runs: Iterable[Mapping[str, Any]], case: str = "memory", calls: CallSelection = "all",
) -> list[PhaseMeans]:
    """The per-call phase means of each policy's runs of ``case``, in the order policies
    first appear (runs without phases are skipped), over ``calls``: every call, each
    workflow's first or its later ones (the retention steps stay per run)."""
    sums: dict[str, dict[str, float]] = {}
    for run in runs:
        if run.get("case", case) != case or not run.get("phases"):
            continue
        s = sums.setdefault(run["policy"], dict.fromkeys(
            ("runs", "calls", *GATEWAY_PHASES, "timed", "prefill", "decode", "timed_upstream",
             "steps", "step_seconds"), 0.0))
        s["runs"] += 1
        engine = {(t[0], t[1]): (t[2], t[3]) for t in run.get("engine_timings", [])}
        for record in run["phases"]:
            workflow, index = record[1].partition("/")[2] or record[1], record[2]
            if calls != "all" and (index == 0) != (calls == "first"):
                continue
            values = dict(zip(GATEWAY_PHASES, record[4:], strict=True))
            s["calls"] += 1
            for name in GATEWAY_PHASES:
                s[name] += values[name]
            engine_seconds = engine.get((workflow, index))
            if engine_seconds is not None:
                s["timed"] += 1
                s["prefill"] += engine_seconds[0]
                s["decode"] += engine_seconds[1]
                s["timed_upstream"] += values["upstream"]
        for step in run.get("retain_steps", []):
            s["steps"] += 1
            s["step_seconds"] += step[3]
    out = []
    for policy, s in sums.items():
        n, timed = max(s["calls"], 1.0), s["timed"]
        prefill = s["prefill"] / timed if timed else float("nan")
        decode = s["decode"] / timed if timed else float("nan")
        wait = (s["timed_upstream"] - s["prefill"] - s["decode"]) / timed if timed \
            else float("nan")
        out.append(PhaseMeans(
            policy, int(s["calls"]), s["door"] / n, s["retain_wait"] / n, s["queue"] / n,
            s["prepare"] / n, s["upstream"] / n, prefill, decode, wait,
            round(s["steps"] / s["runs"]),
            s["step_seconds"] / s["steps"] if s["steps"] else 0.0))
    return out


def render(rows: Sequence[PhaseMeans]) -> str:
    """A markdown table of :func:`phases`' rows (seconds per call)."""
    lines = [
        "| policy | calls | door | retention wait | gateway queue | prepare (slot, restore) "
        "| upstream | of which prefill | decode | engine queue and HTTP | retention steps "
        "per run (mean s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.policy} | {r.calls} | {r.door:.3f} | {r.retain_wait:.3f} | {r.queue:.3f} | "
            f"{r.prepare:.3f} | {r.upstream:.3f} | {r.prefill:.3f} | {r.decode:.3f} | "
            f"{r.engine_wait:.3f} | {r.retain_steps} ({r.retain_step:.3f}) |")
    return "\n".join(lines) + "\n"
