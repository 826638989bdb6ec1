"""Where a policy's mean TCT goes on the real benchmark, from the runs' per-call logs.

Per workflow of a run (``runs.jsonl`` of ``saga bench real``): its TCT splits into the time
its first call was held at the gateway's door (the ``x-saga-admission`` deferral), the time
its calls spent being served after the door (queued at the gateway and in the engine,
prefill, decode: the client sees them as one latency) and the rest (its tool gaps and the
client's own time). Beside them, what the engines said of the prompts (``usage``): prompt
tokens, the share the prefix cache served, and the prefill left (uncached prompt tokens),
overall and for the calls after each workflow's first (where its own KV could have hit).
Means are over the workflows (and calls) of every run of a policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decomposition:
    """One policy's mean TCT, split (seconds per workflow) and its prompts' cache use."""

    policy: str
    workflows: int
    tct: float
    held: float  # at the gateway's door, before its first call went on
    served: float  # its calls' latencies less the time held
    other: float  # tool gaps and the client's time: tct - held - served
    uncached_tokens: float  # prompt tokens prefilled (not from the cache), per workflow
    hit_rate: float  # cached over prompt tokens, every call
    later_hit_rate: float  # the same over the calls after each workflow's first
    later_misses: float  # share of later calls that found less than half their prompt


def decompose(runs: Iterable[Mapping[str, Any]], case: str = "memory") -> list[Decomposition]:
    """The decomposition of each policy's runs of ``case``, in the order policies first
    appear."""
    sums: dict[str, dict[str, float]] = {}
    for run in runs:
        if run.get("case", case) != case:
            continue
        s = sums.setdefault(run["policy"], dict.fromkeys(
            ("n", "tct", "held", "served", "prompt", "cached", "later_prompt",
             "later_cached", "later", "later_misses"), 0.0))
        held_by = run.get("deferred", {})
        calls: dict[str, list[Sequence[Any]]] = {}
        for call in run["call_log"]:
            calls.setdefault(call[0], []).append(call)
        for wf, tct in run["tct"].items():
            mine = sorted(calls.get(wf, []), key=lambda c: c[1])
            held = float(held_by.get(wf, 0.0))
            s["n"] += 1
            s["tct"] += tct
            s["held"] += held
            s["served"] += sum(c[3] for c in mine) - held
            for i, (_, _, _, _, _, _, prompt, cached) in enumerate(mine):
                prompt, cached = max(prompt, 0), max(cached, 0)
                s["prompt"] += prompt
                s["cached"] += cached
                if i:
                    s["later"] += 1
                    s["later_prompt"] += prompt
                    s["later_cached"] += cached
                    s["later_misses"] += cached < prompt / 2
    out = []
    for policy, s in sums.items():
        n = max(s["n"], 1.0)
        out.append(Decomposition(
            policy, int(s["n"]), s["tct"] / n, s["held"] / n, s["served"] / n,
            (s["tct"] - s["held"] - s["served"]) / n, (s["prompt"] - s["cached"]) / n,
            s["cached"] / s["prompt"] if s["prompt"] else 0.0,
            s["later_cached"] / s["later_prompt"] if s["later_prompt"] else 0.0,
            s["later_misses"] / s["later"] if s["later"] else 0.0))
    return out


def render(rows: Sequence[Decomposition]) -> str:
    """A markdown table of :func:`decompose`'s rows."""
    lines = [
        "| policy | mean TCT s | held at the door s | served s | tool and client s | "
        "uncached prompt tokens | hit rate | later calls' hit rate | later calls missed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.policy} | {r.tct:.2f} | {r.held:.2f} | {r.served:.2f} | {r.other:.2f} | "
            f"{r.uncached_tokens:,.0f} | {r.hit_rate:.1%} | {r.later_hit_rate:.1%} | "
            f"{r.later_misses:.0%} |")
    return "\n".join(lines) + "\n"
