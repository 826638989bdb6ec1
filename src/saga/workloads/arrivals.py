"""Arrival processes: when workflows start. All take an injected numpy Generator.

Each returns a sorted float array of arrival times in seconds from 0. Give either ``count``
(that many arrivals) or ``duration`` (all arrivals in ``[0, duration)``). Closed-loop load
has no arrival times: see :attr:`saga.workloads.Workload.closed_loop`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from saga.errors import UserError

Times = npt.NDArray[np.float64]
_Draw = Callable[[int], npt.NDArray[np.float64]]


def _from_gaps(draw: _Draw, count: int | None, duration: float | None) -> Times:
    """Cumulative sums of inter-arrival gaps, the first arrival at 0."""
    if (count is None) == (duration is None):
        raise UserError("give exactly one of count or duration for arrivals")
    if count is not None:
        gaps = draw(max(0, count - 1))
        return np.concatenate([[0.0], np.cumsum(gaps)]) if count > 0 else np.zeros(0)
    assert duration is not None
    times: list[float] = [0.0]
    while True:  # draw in chunks until past the horizon
        chunk = times[-1] + np.cumsum(draw(256))
        keep = chunk[chunk < duration]
        times.extend(keep.tolist())
        if len(keep) < len(chunk):
            return np.asarray(times, dtype=np.float64)


def poisson(rng: np.random.Generator, rate: float, *, count: int | None = None,
            duration: float | None = None) -> Times:
    """Poisson process of ``rate`` arrivals per second (exponential gaps)."""
    return _from_gaps(lambda n: rng.exponential(1.0 / rate, n), count, duration)


def gamma(rng: np.random.Generator, rate: float, cv: float, *, count: int | None = None,
          duration: float | None = None) -> Times:
    """Bursty renewal process: Gamma gaps with mean ``1/rate`` and coefficient of variation ``cv``.

    ``cv`` 1 is Poisson; above 1 arrivals come in bursts separated by long lulls.
    """
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    return _from_gaps(lambda n: rng.gamma(shape, scale, n), count, duration)


def mmpp(rng: np.random.Generator, rates: tuple[float, float], mean_dwell: float, *,
         count: int | None = None, duration: float | None = None) -> Times:
    """Two-state Markov-modulated Poisson process: ``rates`` (calm, burst) per second.

    The state flips after exponential dwell times of mean ``mean_dwell`` seconds.
    """
    horizon = duration if duration is not None else float("inf")
    out: list[float] = []
    t, state = 0.0, 0
    while t < horizon and (count is None or len(out) < count):
        end = min(t + float(rng.exponential(mean_dwell)), horizon)
        if rates[state] > 0:
            s = t + float(rng.exponential(1.0 / rates[state]))
            while s < end and (count is None or len(out) < count):
                out.append(s)
                s += float(rng.exponential(1.0 / rates[state]))
        t, state = end, 1 - state
    arr = np.asarray(out, dtype=np.float64)
    return np.asarray(arr - arr[0], dtype=np.float64) if len(arr) else arr


def replay(timestamps: Sequence[float], *, scale: float = 1.0) -> Times:
    """Real timestamps, sorted and shifted to start at 0, stretched by ``scale``."""
    arr = np.sort(np.asarray(timestamps, dtype=np.float64))
    if len(arr) == 0:
        return arr
    return np.asarray((arr - arr[0]) * scale, dtype=np.float64)
