"""The calibration probe of `saga bench real`: the engines' speed at this run.

The engines' speed moves with the machine (the same code ran 0.1-0.3 s per session faster
in one quiet run than in the one before it), so a preset fitted once cannot follow it. At
the start of a run, on the idle replicas, the probe times a few calls, as the engine
itself timed them (vLLM's per-request prefill and decode times; the client's latency, as the
``cpu-tiny`` preset's points were timed, is as much the loaded machine's wake-ups as the
engine's speed: on a machine at load 20 the same 512-token prefill took 1-6x the preset's
time):

* prefills: fresh prompts (random token ids: nothing cached) of each of
  ``prefill_tokens``, one output token each;
* decode runs: a fresh prompt of ``decode_context`` tokens with ``decode_tokens`` output
  tokens: its decode time (first token to last) is ``decode_tokens - 1`` decode steps of
  one sequence, its prefill time one more prefill point. (Not a call's latency less a
  one-token call's, nor a stream's first-to-last chunk at the client: under load the one
  came out negative, the other bunched 47 tokens into 0.02 s.)

It runs them on each replica alone, one after the other (``solo``), then on all replicas at
once (``together``: every engine busy, as in the memory-bound case), ``repeats`` times
each, after a warm-up call per replica; the replicas' caches are reset before and after,
so none of the probe's traffic is in any policy's run (each run resets the caches again
and counts its prefix hits from there). Each set of points is fitted
(saga.engine.speedfit.fit_speed: a prefill and a decode scale over the preset). The
simulator runs the engines at the ``solo`` fit and slows a replica's steps while the other
one is busy (saga.engine.contention): the engines share the machine's cores, so one speed
cannot serve both the light case (calls mostly alone) and the memory-bound one (both
engines busy). By how much: ``cpu-tiny``'s host contention by default; the ``contention``
the two fits say (:func:`host_contention`) is recorded, and simulated only on request
(saga.bench.real.RealBench.contention): these engines-only sets understate the runs'
(docs/engines.md, "Simulator agreement under drift").
The ``preset`` of the record, one time scale between the two fits (speedfit.midway), is
what the bench simulated with before it modelled the contention (kept for the record).
Nothing of the policies' runs is used. A second probe at the end of the bench says how far
the engines drifted meanwhile (reported, not used).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from saga.engine.costmodel import Efficiency
from saga.engine.hardware import get_gpu, get_model
from saga.engine.speedfit import DecodePoint, PrefillPoint, SpeedFit, fit_speed, midway
from saga.integrations.threads import at_once

__all__ = ["Call", "ProbeSettings", "between", "calibrate", "fit_record", "host_contention",
           "probe"]

#: ``call(url, token_ids, max_tokens)``: one completion on the replica at ``url``; returns
#: its prefill and decode seconds (first token to last) as the engine timed them.
Call = Callable[[str, list[int], int], tuple[float, float]]

# Token ids >= 8 are ordinary tokens of the tiny model (0..7 are control tokens).
_FIRST_ID = 8


class ProbeSettings(BaseModel):
    """What the probe times (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_tokens: tuple[int, ...] = (512, 1536, 3072)
    decode_context: int = Field(1024, ge=1)
    decode_tokens: int = Field(48, ge=2)
    repeats: int = Field(1, ge=1)
    vocab: int = Field(2048, gt=_FIRST_ID)
    model: str = "tiny-llama"
    gpu: str = "cpu-tiny"


def _one_replica(
    call: Call, url: str, settings: ProbeSettings, rng: np.random.Generator,
    clock: Callable[[], float],
) -> dict[str, list[list[float]]]:
    """One round of the probe on one replica: [[tokens, seconds]] of prefills, [[context,
    steps, seconds]] of decode runs."""
    def fresh(n: int) -> list[int]:
        return [int(t) for t in rng.integers(_FIRST_ID, settings.vocab, size=n)]

    prefill = [[n, call(url, fresh(n), 1)[0]] for n in settings.prefill_tokens]
    n, k = settings.decode_context, settings.decode_tokens
    first, decode = call(url, fresh(n), k)
    return {"prefill": [*prefill, [n, first]], "decode": [[n + 1, k - 1, decode]]}


def _all_at_once(
    call: Call, urls: Sequence[str], settings: ProbeSettings,
    rngs: Sequence[np.random.Generator], clock: Callable[[], float],
) -> list[dict[str, list[list[float]]]]:
    """One round of the probe on every replica at once, a thread each."""
    return at_once([partial(_one_replica, call, url, settings, rngs[i], clock)
                    for i, url in enumerate(urls)])


def probe(
    urls: Sequence[str], call: Call, reset: Callable[[str], None],
    settings: ProbeSettings | None = None, *, seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time the probe's calls on ``urls`` (alone, then together); the caches are ``reset``
    before and after. Returns the points and the probe's cost in seconds (``clock``'s)."""
    settings = settings or ProbeSettings()
    started = clock()
    rng = np.random.Generator(np.random.PCG64(seed))
    for url in urls:
        reset(url)
    for url in urls:  # warm-up, not timed
        call(url, [int(t) for t in rng.integers(_FIRST_ID, settings.vocab, size=256)], 2)
    solo: dict[str, list[list[float]]] = {"prefill": [], "decode": []}
    together: dict[str, list[list[float]]] = {"prefill": [], "decode": []}
    for _ in range(settings.repeats):
        for url in urls:
            for key, points in _one_replica(call, url, settings, rng, clock).items():
                solo[key] += points
        rngs = [np.random.Generator(np.random.PCG64(int(rng.integers(1 << 62))))
                for _ in urls]
        for r in _all_at_once(call, urls, settings, rngs, clock):
            for key, points in r.items():
                together[key] += points
    for url in urls:
        reset(url)
    return {"settings": settings.model_dump(), "replicas": len(urls), "solo": solo,
            "together": together, "seconds": clock() - started}


def _fit(points: dict[str, list[list[float]]], base: Efficiency, settings: ProbeSettings,
         chunk: int) -> SpeedFit:
    return fit_speed(
        get_model(settings.model), get_gpu(settings.gpu), base,
        [PrefillPoint(int(n), s) for n, s in points["prefill"]],
        [DecodePoint(int(c), int(k), s) for c, k, s in points["decode"]], chunk=chunk)


def host_contention(record: dict[str, Any]) -> float:
    """How much slower the engines ran together than alone, as the simulator's
    ``ClusterSpec.host_contention`` (saga.engine.contention): the geometric mean of the
    ``together`` over ``solo`` prefill and decode scales of a fitted ``record``, less 1, at
    least 0 (each set is timed once: engines that came out faster together did not speed
    each other up)."""
    solo, together = record["solo"], record["together"]
    ratio = math.sqrt(together["prefill_scale"] / solo["prefill_scale"]
                      * together["decode_scale"] / solo["decode_scale"])
    return max(0.0, ratio - 1.0)


def fit_record(probed: dict[str, Any], base: Efficiency, chunk: int) -> dict[str, Any]:
    """The probe's points fitted: ``solo``, ``together`` and the run's ``preset`` (one time
    scale between them), each as its scales over ``base`` and its efficiency, and the
    ``contention`` the two say (:func:`host_contention`)."""
    settings = ProbeSettings.model_validate(probed["settings"])
    solo = _fit(probed["solo"], base, settings, chunk)
    together = _fit(probed["together"], base, settings, chunk)
    preset = midway(base, solo, together)
    record = {"solo": _row(solo), "together": _row(together), "preset": _row(preset),
              "probe_seconds": probed["seconds"], "points": probed}
    record["contention"] = host_contention(record)
    return record


def between(before: dict[str, Any], after: dict[str, Any], base: Efficiency) -> dict[str, Any]:
    """A record midway between two fitted ones (:func:`midway` of their fits alone and
    together), with the contention those two say."""
    record: dict[str, Any] = {
        which: _row(midway(base, _unrow(before[which]), _unrow(after[which])))
        for which in ("solo", "together")}
    record["contention"] = host_contention(record)
    return record


def _row(f: SpeedFit) -> dict[str, Any]:
    """A fit as a record's row (JSON)."""
    return {"prefill_scale": f.prefill_scale, "decode_scale": f.decode_scale,
            "efficiency": f.efficiency.model_dump()}


def _unrow(row: dict[str, Any]) -> SpeedFit:
    return SpeedFit(row["prefill_scale"], row["decode_scale"],
                    Efficiency.model_validate(row["efficiency"]))


def calibrate(
    urls: Sequence[str], call: Call, reset: Callable[[str], None], base: Efficiency,
    chunk: int, settings: ProbeSettings | None = None, *, seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """:func:`probe` then :func:`fit_record`."""
    return fit_record(probe(urls, call, reset, settings, seed=seed, clock=clock), base, chunk)
