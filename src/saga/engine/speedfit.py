"""Fit a preset's prefill and decode coefficients to timings of calls that ran alone.

The ``cpu-tiny`` preset was fitted to calls that had their replica to themselves, each
modelled as its prefill past the cached prefix (the step that ends it samples the first
token) and then one decode step per further output token (docs/engines.md, "cpu-tiny
calibration"). A calibration probe measures the same two things on idle engines (saga.bench.
probe): prefills of fresh prompts with one output token, and decode runs (a call's latency
less the latency of a one-token call of the same prompt length). This module fits them:

* **decode**: one scale ``d`` of the preset's decode cost: ``mbu / d`` and ``t_per_seq * d``
  (the preset's split between reading memory and per-sequence work is kept: one sequence's
  decode steps cannot tell the two apart). Each decode point is solved for ``d`` exactly
  (the modelled time grows with ``d``); the fit is their median.
* **prefill**: then, with that decode scale, one scale ``p`` of the compute rate:
  ``mfu / p`` (and ``attn_mfu / p``), each prefill point solved for ``p`` exactly, the
  median again.

Timings made by the cost model itself at some ``(p, d)`` give back exactly that ``p`` and
``d`` (tests/engine/test_speedfit.py). :func:`midway` joins two fits (engines probed one at a
time and together) by one time scale between them, as the preset was.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saga.engine.costmodel import CostModel, Efficiency
from saga.engine.hardware import GPU, ModelSpec

__all__ = [
    "DecodePoint", "PrefillPoint", "SoloCall", "SpeedFit", "fit_speed", "fit_time_scale",
    "midway", "scaled",
]

#: the scales searched: a machine 1000x faster or slower than its preset is an error
_LOW, _HIGH = 1e-3, 1e3


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """A call alone on an idle engine: a fresh prompt of ``prompt`` tokens (nothing cached)
    and one output token, answered in ``seconds``."""

    prompt: int
    seconds: float


@dataclass(frozen=True, slots=True)
class DecodePoint:
    """``steps`` decode steps of one sequence alone, the first at ``context`` tokens of KV,
    taking ``seconds``."""

    context: int
    steps: int
    seconds: float


@dataclass(frozen=True, slots=True)
class SoloCall:
    """A call that had its replica to itself: ``prompt`` tokens of which ``cached`` hit the
    prefix cache, ``output`` tokens, answered in ``seconds`` (a recorded run's call log)."""

    prompt: int
    cached: int
    output: int
    seconds: float


@dataclass(frozen=True, slots=True)
class SpeedFit:
    """The fitted scales over ``base`` (>1: slower than the preset) and the efficiency."""

    prefill_scale: float
    decode_scale: float
    efficiency: Efficiency


def scaled(base: Efficiency, prefill_scale: float, decode_scale: float) -> Efficiency:
    """``base`` with its compute rate slower by ``prefill_scale`` and its decode cost
    (memory term and per-sequence time) larger by ``decode_scale``."""
    return base.model_copy(update={
        "mfu": base.mfu / prefill_scale,
        "attn_mfu": None if base.attn_mfu is None else base.attn_mfu / prefill_scale,
        "mbu": base.mbu / decode_scale,
        "t_per_seq": base.t_per_seq * decode_scale,
    })


def _solve(modelled: Callable[[float], float], seconds: float) -> float:
    """The scale at which ``modelled`` (increasing) gives ``seconds``: bisection on log."""
    lo, hi = math.log(_LOW), math.log(_HIGH)
    if not modelled(_LOW) <= seconds <= modelled(_HIGH):
        raise ValueError(f"{seconds:.4g} s is outside what any scale in [{_LOW}, {_HIGH}] "
                         "of the preset gives")
    for _ in range(200):
        mid = (lo + hi) / 2
        if modelled(math.exp(mid)) < seconds:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return math.exp((lo + hi) / 2)


def fit_speed(
    model: ModelSpec, gpu: GPU, base: Efficiency, prefill: Sequence[PrefillPoint],
    decode: Sequence[DecodePoint], *, chunk: int,
) -> SpeedFit:
    """Fit ``base``'s prefill and decode scales to the points (see the module doc);
    ``chunk``: the engine's batched-token limit (a longer prompt prefills in chunks)."""
    if not prefill or not decode:
        raise ValueError("the fit needs at least one prefill and one decode point")

    def cost(p: float, d: float) -> CostModel:
        return CostModel(model, gpu, 1, scaled(base, p, d))

    def decode_scale(x: DecodePoint, p: float) -> float:
        return _solve(lambda s: cost(p, s).decode_steps_time(1, x.context, x.steps), x.seconds)

    def prefill_scale(x: PrefillPoint, d: float) -> float:
        return _solve(lambda s: cost(s, d).prefill_time(x.prompt, 0, chunk=chunk), x.seconds)

    # Each scale is fitted with the other fixed, in turn, until neither moves: decode steps
    # barely depend on the compute rate and prefills barely on the decode cost, so this
    # settles in a few rounds.
    p = d = 1.0
    for _ in range(50):
        d_next = statistics.median(decode_scale(x, p) for x in decode)
        p_next = statistics.median(prefill_scale(x, d_next) for x in prefill)
        settled = abs(p_next - p) <= 1e-12 * p and abs(d_next - d) <= 1e-12 * d
        p, d = p_next, d_next
        if settled:
            break
    return SpeedFit(p, d, _checked(scaled(base, p, d)))


def _checked(efficiency: Efficiency) -> Efficiency:
    """``efficiency`` validated (model_copy does not: a fit past the hardware's peak is an
    error, not a preset)."""
    return Efficiency.model_validate(efficiency.model_dump())


def midway(base: Efficiency, a: SpeedFit, b: SpeedFit) -> SpeedFit:
    """One time scale between two fits: the geometric mean of each scale."""
    p = math.sqrt(a.prefill_scale * b.prefill_scale)
    d = math.sqrt(a.decode_scale * b.decode_scale)
    return SpeedFit(p, d, _checked(scaled(base, p, d)))


def fit_time_scale(
    model: ModelSpec, gpu: GPU, base: Efficiency, calls: Sequence[SoloCall], *, chunk: int,
) -> float:
    """One time scale of ``base`` (prefill and decode alike) that the recorded ``calls``
    say, each call solved exactly (its prefill past the cached prefix, then one decode
    step per further output token), the median: what a recorded run that holds no probe
    tells of its engines' speed."""
    if not calls:
        raise ValueError("the fit needs at least one call")

    def scale(x: SoloCall) -> float:
        def modelled(s: float) -> float:
            cost = CostModel(model, gpu, 1, scaled(base, s, s))
            return cost.prefill_time(x.prompt, x.cached, chunk=chunk) + cost.decode_steps_time(
                1, x.prompt + 1, x.output - 1)

        return _solve(modelled, x.seconds)

    return statistics.median(scale(x) for x in calls)
