"""Quantile-knot distributions: the form in which fitted distributions are written in code."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

# Probabilities of the quantile knots the generators interpolate between (log-linearly).
KNOT_PROBS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def quantile_sample(knots: tuple[float, ...], u: Array) -> Array:
    """Inverse-CDF sampling: interpolate log(value) linearly in probability between knots."""
    logs = np.log(np.asarray(knots, dtype=np.float64))
    return np.asarray(np.exp(np.interp(u, KNOT_PROBS, logs)), dtype=np.float64)


def quantile_cdf(knots: tuple[float, ...], x: Array) -> Array:
    """CDF of the log-linear quantile model at points ``x``."""
    logs = np.log(np.asarray(knots, dtype=np.float64))
    return np.asarray(np.interp(np.log(x), logs, KNOT_PROBS), dtype=np.float64)


