"""A recorded real run beside the simulator's replay of the same repetition, call by call.

``saga bench real`` records each run's calls (runs.jsonl ``call_log``:
saga.integrations.replay.CallRecord); the simulator's replay of the same sessions gives its
own (saga.sim.simulator.CallRecord). :func:`sim_record` puts a simulated run in the shape of
a runs.jsonl line, so the same figures come out of both: the decomposition of the mean TCT
(saga.bench.real_decompose: held at the door, served, hits) and the placements
(:func:`placements`: later calls moved off their previous call's replica, the prompt
tokens they prefilled, later calls kept home that still missed). :func:`send_lag` says
whether the real client sent on time (its sessions' first calls against their planned
arrivals): a late client bunches arrivals and delays every answer it reads, which no
policy did (docs/engines.md, "Real saga against simulated saga, call by call").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any


def sim_record(
    result: Any, policy: str, repetition: int, case: str = "memory",
) -> dict[str, Any]:
    """``result`` (a SimResult of the bench's sessions) as a line of runs.jsonl: TCTs,
    door holds and per call (workflow without its tenant, index, sent and latency from
    the workflow's arrival for the first call as the client times it, replica, 200,
    prompt and cached tokens)."""
    workflows = {w.workflow: w for w in result.workflows}
    by_workflow: dict[str, list[Any]] = {}
    for c in result.calls:
        by_workflow.setdefault(c.workflow, []).append(c)
    log: list[list[Any]] = []
    for wf, calls in by_workflow.items():
        w = workflows[wf]
        for i, c in enumerate(sorted(calls, key=lambda c: c.ready_at)):
            sent = w.arrival if i == 0 else c.ready_at  # the client sends before the door
            log.append([_short(wf), i, sent, c.finished_at - sent, c.replica, 200,
                        c.prompt_tokens, c.cached_tokens])
    return {
        "case": case, "policy": policy, "repetition": repetition,
        "tct": {_short(w.workflow): w.tct for w in result.workflows},
        "deferred": {_short(w.workflow): w.started_at - w.arrival for w in result.workflows
                     if w.started_at - w.arrival > 1e-9},
        "call_log": log,
    }


def _short(workflow: str) -> str:
    """``default/s003`` (the simulator's tenant/id) -> ``s003`` (the replay's id)."""
    return workflow.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Placements:
    """Per run: later calls on another replica than their previous call, the prompt tokens
    those prefilled, and later calls on the same replica that found less than half their
    prompt cached."""

    moved: int
    moved_uncached: int
    home_missed: int


def placements(run: Mapping[str, Any]) -> Placements:
    by_workflow: dict[str, list[Sequence[Any]]] = {}
    for c in run["call_log"]:
        by_workflow.setdefault(c[0], []).append(c)
    moved = uncached = missed = 0
    for calls in by_workflow.values():
        calls = sorted(calls, key=lambda c: c[1])
        for before, call in pairwise(calls):
            prompt, cached = max(call[6], 0), max(call[7], 0)
            if call[4] != before[4]:
                moved += 1
                uncached += prompt - cached
            elif cached < prompt / 2:
                missed += 1
    return Placements(moved, uncached, missed)


def send_lag(run: Mapping[str, Any], arrival_interval: float) -> tuple[float, int]:
    """The latest a session's first call was sent after its planned arrival (workflow
    ``sNNN`` arrives at N x ``arrival_interval``; saga.integrations.replay.plan) and how
    many were over 0.25 s late."""
    lags = [c[2] - int(c[0][1:]) * arrival_interval for c in run["call_log"] if c[1] == 0]
    return max(lags, default=0.0), sum(lag > 0.25 for lag in lags)
