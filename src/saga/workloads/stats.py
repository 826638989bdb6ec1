"""Summary statistics and plots of a set of workflows (``saga workload stats``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from saga.core.workflow import Call, Workflow

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TraceStats:
    """Per-quantity samples of a trace: one value per workflow or per call."""

    calls_per_workflow: Array
    prompt_tokens: Array
    output_tokens: Array
    gaps: Array  # gaps of calls with a predecessor
    prefix_reuse: Array  # share of a call's prompt already in a predecessor's prompt+output
    tenants: dict[str, int]
    arrival_span: float


def _covered(first: int, count: int, spans: list[tuple[int, int]]) -> int:
    """How many ids ``first, first+1, ...`` (at most ``count``) lie in the ``spans`` in a row."""
    pos, end = first, first + count
    for a, b in spans:  # sorted, half-open [a, b)
        if a <= pos < b:
            pos = min(b, end)
            if pos == end:
                break
    return pos - first


def _reuse(w: Workflow, c: Call, index: dict[str, int]) -> float:
    """Fraction of ``c``'s prompt that a predecessor holds as KV (shared prefix + its blocks).

    A predecessor holds its prompt's blocks and, after them, its output's full blocks (the
    simulator's convention).
    """
    bt = w.block_tokens
    best = 0
    for a in c.after:
        prev = w.calls[index[a]]
        spans = [(f, f + n) for f, n in prev.prompt.blocks]
        if spans:
            spans.append((spans[-1][1], spans[-1][1] + prev.output_tokens // bt))
        spans.sort()
        shared = 0
        for (name, n), other in zip(c.prompt.shared, prev.prompt.shared, strict=False):
            if (name, n) != other:
                break
            shared += n
        blocks = 0
        for f, n in c.prompt.blocks:
            run = _covered(f, n, spans)
            blocks += run
            if run < n:
                break
        best = max(best, shared + blocks * bt)
    return min(1.0, best / c.prompt.tokens)


def compute(workflows: Sequence[Workflow]) -> TraceStats:
    """Collect the samples of every quantity."""
    prompt, output, gaps, reuse = [], [], [], []
    tenants: dict[str, int] = {}
    for w in workflows:
        tenants[w.tenant] = tenants.get(w.tenant, 0) + 1
        index = w.call_index()
        for c in w.calls:
            prompt.append(c.prompt.tokens)
            output.append(c.output_tokens)
            if c.after:
                gaps.append(c.gap)
                reuse.append(_reuse(w, c, index))
    arr = [w.arrival for w in workflows]
    f = np.float64
    return TraceStats(
        np.asarray([len(w.calls) for w in workflows], dtype=f), np.asarray(prompt, dtype=f),
        np.asarray(output, dtype=f), np.asarray(gaps, dtype=f), np.asarray(reuse, dtype=f),
        tenants, (max(arr) - min(arr)) if arr else 0.0,
    )


QUANTITIES = {
    "calls_per_workflow": "calls per workflow",
    "prompt_tokens": "prompt tokens",
    "output_tokens": "output tokens",
    "gaps": "gap (s)",
    "prefix_reuse": "prefix reuse",
}


def quantile_rows(s: TraceStats) -> list[tuple[str, int, float, float, float, float]]:
    """(quantity, n, mean, p50, p90, max) per quantity."""
    rows = []
    for key, label in QUANTITIES.items():
        x: Array = getattr(s, key)
        if len(x) == 0:
            rows.append((label, 0, float("nan"), float("nan"), float("nan"), float("nan")))
            continue
        p50, p90 = np.quantile(x, [0.5, 0.9])
        rows.append((label, len(x), float(x.mean()), float(p50), float(p90), float(x.max())))
    return rows


def plot(s: TraceStats, out_dir: str | Path, title: str = "") -> list[Path]:
    """One PNG histogram (log x where it helps) per quantity; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for key, label in QUANTITIES.items():
        x: Array = getattr(s, key)
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        if len(x):
            log = key != "prefix_reuse" and x.min() >= 0 and x.max() > 100
            data = np.log10(np.maximum(x, 1e-3)) if log else x
            ax.hist(data, bins=40, color="#4477aa")
            ax.set_xlabel(f"log10 {label}" if log else label)
        ax.set_ylabel("count")
        ax.set_title(f"{title} {label}".strip())
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files
