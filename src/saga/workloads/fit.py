"""Fit the generators' distributions to the Claude Code trace: ``python -m saga.workloads.fit``.

Prints, for each quantity, quantile knots at :data:`KNOT_PROBS` (the generators sample
log-linearly between them), the Kolmogorov-Smirnov distance of that model to the data, and
for comparison the KS distance of a maximum-likelihood log-normal; the numbers are then
written by hand into :mod:`saga.workloads.generators.fitted` with the trace name and date.

Quantities (over all sessions; ``calls`` counts main and sub-agent calls):

* ``calls``: calls per session;
* ``first_prompt``: the main agent's first prompt, less its tool and system prompt;
* ``system``: tool schema plus system prompt tokens of a session;
* ``growth``: tokens a prompt adds over the previous prompt of the same agent (> 0 only);
* ``output``: output tokens per call;
* ``tool_gap``: tool time before a call that follows a tool result (> 0 only);
* ``human_gap``: time before a call that follows a human message (> 0 only);
* ``p_human``: share of non-first calls that follow a human message;
* ``p_compact``: share of non-first calls whose prompt shrinks below half the previous one.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from saga.workloads.paths import default_trace
from saga.workloads.quantiles import KNOT_PROBS, quantile_cdf, quantile_sample
from saga.workloads.readers._fields import json_lines

Array = npt.NDArray[np.float64]

__all__ = ["KNOT_PROBS", "QuantileFit", "collect", "fit", "fit_quantiles", "ks_distance",
           "ks_two_sample", "quantile_cdf", "quantile_sample"]


@dataclass(frozen=True)
class QuantileFit:
    """An empirical distribution as quantile knots, sampled log-linearly between them."""

    knots: tuple[float, ...]  # values at KNOT_PROBS
    ks: float  # KS distance of the interpolated model to the data
    ks_lognormal: float  # KS distance of a maximum-likelihood log-normal, for comparison
    n: int


def lognormal_cdf(x: Array, mu: float, sigma: float) -> Array:
    """CDF of a log-normal distribution at positive points ``x``."""
    z = (np.log(x) - mu) / (sigma * math.sqrt(2.0))
    erf = np.vectorize(math.erf)
    return np.asarray(0.5 * (1.0 + erf(z)), dtype=np.float64)


def ks_distance(samples: Array, cdf: Array) -> float:
    """Two-sided KS statistic of sorted ``samples`` against a model CDF evaluated at them."""
    n = len(samples)
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def ks_two_sample(a: Array, b: Array) -> float:
    """Two-sample KS distance between the empirical distributions of ``a`` and ``b``."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def fit_quantiles(values: Array) -> QuantileFit:
    """Quantile-knot fit of positive values, with its KS distance and a log-normal's.

    Knots rather than one log-normal: the trace's quantities are heavy-tailed, multi-modal
    and rounded (1 s timestamps), and a log-normal misses them by a KS distance of 0.05-0.3.
    """
    x = np.sort(values[values > 0])
    knots = tuple(float(round(q, 1)) for q in np.quantile(x, KNOT_PROBS))
    knots = tuple(max(k, 0.1) for k in knots)
    logs = np.log(x)
    ln = ks_distance(x, lognormal_cdf(x, float(logs.mean()), float(logs.std())))
    return QuantileFit(knots, ks_distance(x, quantile_cdf(knots, x)), ln, len(x))


@dataclass
class TraceSamples:
    """Raw per-quantity samples taken from the Claude Code trace."""

    calls: list[float]
    first_prompt: list[float]
    system: list[float]
    growth: list[float]
    output: list[float]
    tool_gap: list[float]
    human_gap: list[float]
    human: int = 0
    compact: int = 0
    followers: int = 0


def collect(path: str | Path) -> TraceSamples:
    """Read the raw trace and collect the samples the fit uses."""
    s = TraceSamples([], [], [], [], [], [], [])
    for _, obj in json_lines(path):
        calls = obj["calls"]
        s.calls.append(len(calls))
        shared = obj["tool_tokens"] + obj["system_tokens"]
        s.system.append(shared)
        last: dict[str, int] = {}
        for c in calls:
            s.output.append(max(1, c["out"]))
            prev = last.get(c["agent"])
            if prev is None:
                if c["agent"] == "main":
                    s.first_prompt.append(max(1, c["in"] - shared))
            else:
                _follower(s, c, prev)
            last[c["agent"]] = c["in"]
    return s


def _follower(s: TraceSamples, c: dict[str, object], prev: int) -> None:
    s.followers += 1
    tokens = int(c["in"])  # type: ignore[call-overload]
    if tokens < prev // 2:
        s.compact += 1
    elif tokens > prev:
        s.growth.append(tokens - prev)
    gap = c["think_time"]
    human = "tool_result" not in str(c.get("input_types", ""))
    if human:
        s.human += 1
    if isinstance(gap, int | float) and gap > 0:
        (s.human_gap if human else s.tool_gap).append(float(gap))


def fit(path: str | Path) -> dict[str, object]:
    """All fits for the trace at ``path`` as a JSON-able dict."""
    s = collect(path)
    out: dict[str, object] = {}
    for name in QUANTITIES:
        f = fit_quantiles(np.asarray(getattr(s, name), dtype=np.float64))
        out[name] = {"knots": list(f.knots), "ks": round(f.ks, 4),
                     "ks_lognormal": round(f.ks_lognormal, 4), "n": f.n}
    out["p_human"] = round(s.human / s.followers, 4)
    out["p_compact"] = round(s.compact / s.followers, 4)
    return out


QUANTITIES = ("calls", "first_prompt", "system", "growth", "output", "tool_gap", "human_gap")


def plot_fit(path: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per quantity: the trace's CDF against the fitted knot model's and a log-normal's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = collect(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    u = np.linspace(0.0005, 0.9995, 2000)
    for name in QUANTITIES:
        x = np.sort(np.asarray(getattr(s, name), dtype=np.float64))
        x = x[x > 0]
        f = fit_quantiles(x)
        logs = np.log(x)
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label="trace", color="black")
        ax.plot(quantile_sample(f.knots, u), u, label=f"knots (KS {f.ks:.3f})", ls="--")
        ax.plot(x, lognormal_cdf(x, float(logs.mean()), float(logs.std())), ls=":",
                label=f"log-normal (KS {f.ks_lognormal:.3f})")
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("CDF")
        ax.legend(fontsize=8)
        fig.tight_layout()
        file = out / f"fit_{name}.png"
        fig.savefig(file)
        plt.close(fig)
        files.append(file)
    return files


def main(argv: list[str] | None = None) -> int:
    """Print the fit as JSON; with ``--plots DIR`` also write the CDF plots."""
    ap = argparse.ArgumentParser(prog="python -m saga.workloads.fit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", help="Claude Code trace (default: the shared one)")
    ap.add_argument("--plots", metavar="DIR", help="write fit_<quantity>.png here")
    args = ap.parse_args(argv)
    path = args.path or default_trace("claude_code_sessions.jsonl.gz")
    print(json.dumps(fit(path), indent=1))
    if args.plots:
        plot_fit(path, args.plots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
