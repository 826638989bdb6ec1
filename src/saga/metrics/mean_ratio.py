"""The 95 % interval of a ratio of mean TCTs: mean(baseline) / mean(candidate).

:func:`saga.metrics.summary.speedup` gives the geometric mean of paired per-workflow ratios
and its interval. A benchmark that headlines the ratio of the policies' mean TCTs needs the
interval of that figure instead: the two differ whenever the per-workflow ratios spread, and
the mean ratio weighs the long workflows most (docs/engines.md, "The interval of the
mean-TCT ratio").

Two paired bootstraps over the same cells (the keys both mappings hold), with a fixed seed:

* over cells: a resample draws cells with replacement and takes mean(baseline) /
  mean(candidate) over the drawn cells;
* over blocks (``block`` maps a cell to its block, e.g. a session across repetitions): a
  resample draws whole blocks with replacement and takes the same ratio over every cell of
  the drawn blocks. Cells of one block move together, so their correlation (the same
  session's prompts and arrival slot in every repetition) does not pose as independent
  evidence: the interval is as wide as the blocks' spread says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np


def mean_ratio_interval(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    block: Callable[[str], str] | None = None,
    seed: int = 0,
    resamples: int = 2000,
) -> dict[str, float]:
    """``mean_ratio``: mean(baseline) / mean(candidate) over the paired cells; ``mean_ci_low``
    and ``mean_ci_high``: its 95 % percentile interval over cells; with ``block``,
    ``mean_block_ci_low``/``mean_block_ci_high`` over whole blocks and ``blocks``, how many
    there are. Every paired cell counts, whatever its TCT (a failed session's bound too)."""
    keys = sorted(set(baseline) & set(candidate))
    nan = float("nan")
    out: dict[str, float] = {"mean_ratio": nan, "mean_ci_low": nan, "mean_ci_high": nan}
    if block is not None:
        out |= {"mean_block_ci_low": nan, "mean_block_ci_high": nan, "blocks": 0}
    if not keys:
        return out
    base = np.array([baseline[k] for k in keys], dtype=float)
    cand = np.array([candidate[k] for k in keys], dtype=float)
    out["mean_ratio"] = _ratio(float(base.sum()), float(cand.sum()))
    # one stream per interval: adding the block interval leaves the cells' one unchanged
    cells = np.random.default_rng(seed)
    drawn = cells.integers(0, len(keys), size=(resamples, len(keys)))
    out["mean_ci_low"], out["mean_ci_high"] = _percentiles(base[drawn].sum(axis=1),
                                                           cand[drawn].sum(axis=1))
    if block is not None:
        names = sorted({block(k) for k in keys})
        index = {name: i for i, name in enumerate(names)}
        member = np.array([index[block(k)] for k in keys])
        # each block's sums: a drawn block brings all of its cells
        base_blocks = np.bincount(member, weights=base, minlength=len(names))
        cand_blocks = np.bincount(member, weights=cand, minlength=len(names))
        picks = np.random.default_rng(seed + 1).integers(
            0, len(names), size=(resamples, len(names)))
        out["mean_block_ci_low"], out["mean_block_ci_high"] = _percentiles(
            base_blocks[picks].sum(axis=1), cand_blocks[picks].sum(axis=1))
        out["blocks"] = len(names)
    return out


def _ratio(base: float, cand: float) -> float:
    # a ratio of sums over the same drawn cells is the ratio of their means
    return base / cand if cand > 0 else math.inf


def _percentiles(base: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(cand > 0, base / np.where(cand > 0, cand, 1.0), math.inf)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)
