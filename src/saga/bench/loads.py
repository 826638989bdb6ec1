"""Mean TCT against a baseline across offered loads, with the most any policy could show.

A row compares a candidate policy with a baseline at one offered load, on the workflows both
finished. Two ways to average, and what bounds each:

* **ratio of means**: mean TCT_baseline / mean TCT_candidate. A sum of TCTs is dominated by
  the longest workflows; on real Claude Code sessions those are days of tool and human time
  that no scheduler can shorten. Its ceiling is mean TCT_baseline / mean TCT_alone (every
  workflow at its TCT alone on an idle replica), so when the baseline adds little to that
  sum, no scheduler can show a large ratio.
* **geomean of paired ratios**: each workflow counts once whatever its length (the
  ``speedup`` of saga.metrics.summary); its ceiling is ``speedup_ceiling``.

``delay ratio`` is (mean TCT_baseline - mean alone) / (mean TCT_candidate - mean alone): the
time the schedulers add to the workflows' own time, the part a scheduler controls. It is not
a TCT ratio and must not be shown as one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from saga.metrics.summary import speedup, speedup_ceiling


@dataclass(frozen=True)
class LoadRow:
    """One policy against the baseline at one load (TCTs in seconds, over paired workflows)."""

    load: float  # offered rate over the baseline's goodput capacity
    rate: float  # workflows per second
    policy: str
    paired: int
    mean_alone: float
    mean_baseline: float
    mean_policy: float
    mean_ratio: float
    mean_ceiling: float
    geomean: float
    geomean_ceiling: float
    delay_ratio: float


def load_row(
    load: float,
    rate: float,
    policy: str,
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    alone: Mapping[str, float],
) -> LoadRow:
    """``policy``'s row: TCT maps (workflow -> seconds) of the baseline, the policy and the
    workflows alone, compared over the workflows in all three."""
    keys = sorted(set(baseline) & set(candidate) & set(alone))
    if not keys:
        raise ValueError(f"{policy}: no workflow finished under both policies")
    n = len(keys)
    mean_alone = sum(alone[k] for k in keys) / n
    mean_base = sum(baseline[k] for k in keys) / n
    mean_mine = sum(candidate[k] for k in keys) / n
    paired_base = {k: baseline[k] for k in keys}
    paired_mine = {k: candidate[k] for k in keys}
    added = mean_mine - mean_alone
    return LoadRow(
        load=load,
        rate=rate,
        policy=policy,
        paired=n,
        mean_alone=mean_alone,
        mean_baseline=mean_base,
        mean_policy=mean_mine,
        mean_ratio=mean_base / mean_mine,
        mean_ceiling=mean_base / mean_alone,
        geomean=speedup(paired_base, paired_mine, resamples=1)["geomean"],
        geomean_ceiling=speedup_ceiling(paired_base, paired_mine, alone),
        delay_ratio=(mean_base - mean_alone) / added if added > 0 else math.inf,
    )


def markdown(rows: Sequence[LoadRow], baseline: str) -> str:
    """The table: one line per load and policy, the baseline's and the ideal's means first."""
    head = (
        f"| load (x {baseline}'s capacity) | rate (wf/s) | sessions | ideal mean (s) | "
        f"{baseline} mean (s) | policy | mean (s) | {baseline} / policy: means | ceiling | "
        "geomean | ceiling | added delay ratio |\n"
        + "|---" * 12 + "|\n"
    )
    lines = [
        f"| {r.load:.3g}x | {r.rate:.4g} | {r.paired} | {r.mean_alone:,.0f} | "
        f"{r.mean_baseline:,.0f} | {r.policy} | {r.mean_policy:,.0f} | {r.mean_ratio:.2f}x | "
        f"{r.mean_ceiling:.2f}x | {r.geomean:.2f}x | {r.geomean_ceiling:.2f}x | "
        f"{r.delay_ratio:.2f}x |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"
