"""Where a policy's paired TCT ratios come from on the real benchmark: by the baseline's
replica load, and the calls that lost their KV.

A baseline that routes by a hash of the session id (vllm-affinity, continuum) puts the
same sessions together in every run: on the llama.cpp quick memory case 4 of the 10 on one
replica and 6 on the other. The paired ratios (baseline TCT over the candidate's, per
repetition and session) then fall into one group per replica, and the bootstrap interval
of their geomean spans the distance between the groups. :func:`replica_groups` gives each
group's pairs, geomean and spread; :func:`misses` counts a run's later calls that found
less than half of their previous call's prompt cached, on the replica of that call (its KV
lost there) or elsewhere (moved). :func:`sessions_by_place` splits a run's own sessions
by where it put them: held at the door (the gate's wait is part of their TCT) or not, and
by how many sessions shared the replica of their first call.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RatioGroup:
    """The pairs whose session shared its baseline replica with ``sessions`` sessions."""

    sessions: int
    pairs: int
    geomean: float
    sd_log: float  # population standard deviation of the log ratios


@dataclass(frozen=True)
class Misses:
    """Later calls of a run that recomputed most of their previous prompt."""

    own: int  # on the replica of the workflow's previous call
    own_tokens: int  # their uncached prompt tokens
    moved: int  # on another replica
    moved_tokens: int


def _first_replicas(run: Mapping[str, Any]) -> dict[str, int]:
    # call_log rows: workflow, index, sent, latency, replica, status, prompt, cached
    return {row[0]: row[4] for row in run["call_log"] if row[1] == 0}


def replica_groups(
    runs: Iterable[Mapping[str, Any]], candidate: str, baseline: str,
) -> list[RatioGroup]:
    """The ratio groups of ``baseline`` over ``candidate``, pairing the two policies' runs
    by their ``key`` (e.g. a run's repetition), smallest group first."""
    runs = list(runs)
    tct = {(r["key"], w): t for r in runs if r["policy"] == candidate
           for w, t in r["tct"].items()}
    logs: dict[int, list[float]] = {}
    for run in runs:
        if run["policy"] != baseline:
            continue
        home = _first_replicas(run)
        sharing = Counter(home.values())
        for workflow, seconds in run["tct"].items():
            mine = tct.get((run["key"], workflow))
            if mine and seconds > 0 and workflow in home:
                logs.setdefault(sharing[home[workflow]], []).append(math.log(seconds / mine))
    groups = []
    for sessions, values in sorted(logs.items()):
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        groups.append(RatioGroup(sessions, len(values), math.exp(mean), sd))
    return groups


def misses(run: Mapping[str, Any]) -> Misses:
    """The run's later calls that found less than half of the previous call's prompt
    cached, split by whether they ran on the previous call's replica."""
    own = own_tokens = moved = moved_tokens = 0
    previous: dict[str, tuple[int, int]] = {}  # workflow -> (replica, prompt tokens)
    for workflow, index, _, _, replica, _, prompt, cached in sorted(
            run["call_log"], key=lambda row: (row[0], row[1])):
        before = previous.get(workflow)
        if index > 0 and before is not None and cached < before[1] / 2:
            if replica == before[0]:
                own, own_tokens = own + 1, own_tokens + prompt - cached
            else:
                moved, moved_tokens = moved + 1, moved_tokens + prompt - cached
        previous[workflow] = (replica, prompt)
    return Misses(own, own_tokens, moved, moved_tokens)


@dataclass(frozen=True)
class PlaceGroup:
    """A run's sessions of one kind (``held`` at the door or not) on a replica whose first
    calls came from ``sessions`` sessions."""

    held: bool
    sessions: int
    count: int
    mean_tct: float
    mean_wait: float  # at the door, seconds (0 for those not held)


def sessions_by_place(run: Mapping[str, Any]) -> list[PlaceGroup]:
    """``run``'s sessions grouped by (held at the door, sessions sharing their first
    replica), those not held first, then by that count."""
    home = _first_replicas(run)
    sharing = Counter(home.values())
    held: Mapping[str, float] = run.get("deferred", {})
    found: dict[tuple[bool, int], list[tuple[float, float]]] = {}
    for workflow, seconds in run["tct"].items():
        if workflow not in home:
            continue
        key = (workflow in held, sharing[home[workflow]])
        found.setdefault(key, []).append((seconds, held.get(workflow, 0.0)))
    return [PlaceGroup(h, n, len(v), sum(t for t, _ in v) / len(v), sum(w for _, w in v) / len(v))
            for (h, n), v in sorted(found.items())]
