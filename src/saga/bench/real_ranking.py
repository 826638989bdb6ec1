"""The simulator's ranking against the real runs', over the pairs the real runs separate.

The raw order (``saga.bench.real.ranking``) compares mean TCTs: two policies 2 % apart in
runs that vary by 10 % swap places from one record to the next, and a simulator that gives
them the same time is then said to disagree, or, by luck, to agree. Here each pair of
policies is first asked whether the real runs tell them apart: the paired geometric mean of
their TCT ratio over (repetition, workflow), with its 95 % bootstrap interval
(``saga.metrics.summary.speedup``, the figure SAGA's speedups use). A pair whose interval
excludes 1 is *separated*, and the simulator agrees on it when it orders the two the same
way; a pair whose interval contains 1 is a *tie* in the real runs, which no simulated order
can contradict. Both lists are reported beside the raw order, so a tie in noise is neither
called a disagreement nor hidden (docs/engines.md, "Ranking over the pairs the runs
separate").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from typing import Any


def separated_pairs(
    paired: Mapping[str, Mapping[str, float]], sim: Mapping[str, float],
) -> dict[str, Any]:
    """``paired``: per policy its real TCTs keyed by ``"repetition:workflow"``; ``sim``: the
    simulated mean TCT per policy. Returns ``separated`` (per pair the real runs tell apart:
    the faster and the slower, the paired geomean of slower/faster TCT with its interval,
    ``sim_order``: ``same``, ``reversed`` or ``tied`` (the simulator gives both the same
    time: it does not separate them either), ``sim_agrees``: ``same``), ``ties`` (the
    pairs they do not) and ``separated_same`` (the simulator orders every separated pair as
    the runs do)."""
    from saga.metrics.summary import speedup

    policies = [p for p in paired if p in sim]
    separated: list[dict[str, Any]] = []
    ties: list[list[str]] = []
    for a, b in combinations(policies, 2):
        f = speedup(paired[b], paired[a])  # b's TCT over a's: above 1 when a is faster
        if f["n"] and f["ci_low"] > 1.0:
            faster, slower, ratio = a, b, f
        elif f["n"] and f["ci_high"] < 1.0:
            faster, slower, ratio = b, a, speedup(paired[a], paired[b])
        else:
            ties.append([a, b])
            continue
        order = ("tied" if math.isclose(sim[faster], sim[slower], rel_tol=1e-9)
                 else "same" if sim[faster] < sim[slower] else "reversed")
        separated.append({
            "faster": faster, "slower": slower, "geomean": ratio["geomean"],
            "ci_low": ratio["ci_low"], "ci_high": ratio["ci_high"],
            "sim_order": order, "sim_agrees": order == "same"})
    return {"separated": separated, "ties": ties,
            "separated_same": all(s["sim_agrees"] for s in separated)}
