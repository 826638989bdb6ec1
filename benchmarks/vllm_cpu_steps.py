"""How vLLM-CPU's steps cost against the ``cpu-tiny`` cost model, where SAGA's decode guard acts.

SAGA's scheduler inside vLLM cuts prefills into small steps while 3 or more requests decode
(vLLM's ``long_prefill_token_threshold``: 192 tokens on the real bench's engines), so its
engines take more, smaller steps, most of them mixed with decodes. Two measurements, each on
vLLM-CPU engines started with the real bench's arguments on one core
(docs/engines.md, "Simulator agreement under drift"):

* ``chunks``: two stock engines, one with ``--long-prefill-token-threshold 192``; fresh
  prompts alone (nothing cached), the engine's own prefill seconds
  (``vllm:request_prefill_time_seconds``), the two engines alternated each round. Does a
  prefill in 192-token steps cost more than in one step (a fixed cost per step)?
* ``mixed``: one engine with the 192 threshold (and vLLM-CPU's default KV, which holds
  them all); ``k`` sequences decode from cached prompts
  of ``ctx`` tokens, then a fresh prompt of 3,072 tokens is prefilled beside them in 16
  chunks. The decode step alone and the mixed step come from the streams' token counts at
  the client (over 0.6 s before the prompt, and over its prefill), the chunk alone from the
  same prompt size sent alone; each beside the model's decode step, chunk and mixed step.

Wall-clock figures: run it on a quiet machine, or compare only within one run.

    PYTHONPATH=src python benchmarks/vllm_cpu_steps.py chunks --rounds 6 --out runs/steps
    PYTHONPATH=src python benchmarks/vllm_cpu_steps.py mixed --trials 3 --out runs/steps
    PYTHONPATH=src python benchmarks/vllm_cpu_steps.py context --rounds 5 --out runs/steps

* ``context``: one stock engine (vLLM-CPU's default KV); one sequence decodes alone from a
  fresh prompt of each of several lengths, the engine's own decode seconds
  (``vllm:request_decode_time_seconds``) over its steps, beside the model's decode step at
  that context. Does a decode step grow with its context as the model says? (The bench's
  probe times decode at one context, 1,024 tokens; the memory-bound calls decode at 2-6k.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from saga.bench.real import RealBench, _vllm_call, reset_prefix_cache
from saga.engine.cluster import get_cluster
from saga.engine.costmodel import CostModel
from saga.integrations import engines as eng

#: the decode guard's chunk on the bench's engines (3/64 of 4,096 batched tokens)
CHUNK = 192
#: the fresh prompt prefilled beside the decodes: 16 chunks
FRESH = 3072
#: token ids >= 8 are ordinary tokens of the tiny model
_FIRST_ID, _VOCAB = 8, 2048


@contextmanager
def engines(out: Path, thresholds: Sequence[int], *, bench_kv: bool) -> Iterator[list[str]]:
    """Stock vLLM-CPU engines with the bench's arguments, all on core 0 (used one at a time),
    one per ``thresholds`` entry (0: no ``--long-prefill-token-threshold``); their URLs.
    ``bench_kv``: the bench's KV (80 usable blocks); else vLLM-CPU's 1 GiB, so that the
    decodes and the fresh prompt all fit."""
    bench = RealBench()

    def starter(threshold: int) -> eng.Starter:
        args = ["--block-size", str(bench.block_tokens), "--max-num-batched-tokens",
                str(bench.max_num_batched_tokens)]
        if bench_kv:
            args += ["--num-gpu-blocks-override", str(bench.kv_blocks)]
        if threshold:
            args += ["--long-prefill-token-threshold", str(threshold)]
        return partial(eng.start_vllm, eng.tiny_model_dir(), eng.free_port(), extra_args=args,
                       max_model_len=bench.max_model_len, cpu_threads="0",
                       log_dir=out / "logs", env={"VLLM_SERVER_DEV_MODE": "1"})

    with eng.running_engines(map(starter, thresholds), ready_timeout=900) as procs:
        yield [p.base_url for p in procs]


def _fresh(rng: np.random.Generator, n: int) -> list[int]:
    return [int(t) for t in rng.integers(_FIRST_ID, _VOCAB, size=n)]


def _model() -> CostModel:
    return get_cluster("cpu-tiny").cost_model()


def chunks(out: Path, rounds: int, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Fresh prompts alone in one step and in 192-token steps (see the module doc)."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    with engines(out, (0, CHUNK), bench_kv=True) as (whole, chunked):
        urls = {"whole": whole, "chunked": chunked}
        for url in urls.values():
            _vllm_call(url, _fresh(rng, 256), 2)  # warm-up
        for r in range(rounds):
            for n in sizes:
                for name in ("whole", "chunked") if r % 2 == 0 else ("chunked", "whole"):
                    reset_prefix_cache(urls[name])
                    prefill, _ = _vllm_call(urls[name], _fresh(rng, n), 1)
                    rows.append({"engine": name, "tokens": n, "round": r, "prefill": prefill})
    model = _model()
    for n in sizes:
        line = [f"{n:5d} tokens:"]
        for name, chunk in (("whole", 4096), ("chunked", CHUNK)):
            xs = [x["prefill"] for x in rows if x["engine"] == name and x["tokens"] == n]
            line.append(f"{name} fastest {min(xs):.3f} s, median {statistics.median(xs):.3f} s "
                        f"(model {model.prefill_time(n, 0, chunk=chunk):.3f} s)")
        print("  ".join(line))
    return rows


async def _stream(session: aiohttp.ClientSession, url: str, prompt: list[int],
                  max_tokens: int, stamps: list[float]) -> None:
    body = {"model": eng.SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True}
    async with session.post(url + "/v1/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                stamps.append(time.perf_counter())


async def _once(session: aiohttp.ClientSession, url: str, prompt: list[int]) -> float:
    body = {"model": eng.SERVED_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
            "ignore_eos": True}
    start = time.perf_counter()
    async with session.post(url + "/v1/completions", json=body) as response:
        await response.read()
    return time.perf_counter() - start


async def _mixed_trials(url: str, k: int, ctx: int, trials: int,
                        rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    async with aiohttp.ClientSession() as session:
        prompts = [_fresh(rng, ctx) for _ in range(k)]
        for prompt in prompts:
            await _once(session, url, prompt)  # cached from here on
        for trial in range(trials):
            stamps: list[list[float]] = [[] for _ in range(k)]
            # enough output that the decodes outlast the fresh prompt's prefill
            tasks = [asyncio.create_task(_stream(session, url, prompts[i], 700, stamps[i]))
                     for i in range(k)]
            await asyncio.sleep(0.7)
            sent = time.perf_counter()
            latency = await _once(session, url, _fresh(rng, FRESH))
            await asyncio.gather(*tasks)

            during = _steps(stamps, sent, sent + latency)
            alone = await _once(session, url, _fresh(rng, FRESH))
            rows.append({"k": k, "ctx": ctx, "trial": trial,
                         "decode_step": 0.6 / max(_steps(stamps, sent - 0.6, sent), 1e-9),
                         "mixed_step": latency / during if during >= 8 else None,
                         "chunk": alone / (FRESH // CHUNK)})
    return rows


def _steps(stamps: Sequence[Sequence[float]], a: float, b: float) -> float:
    """Decode steps per stream in [a, b): the streams' tokens received then."""
    return sum(1 for s in stamps for x in s if a <= x < b) / len(stamps)


def _model_steps(model: CostModel, k: int, ctx: int) -> tuple[float, float, float]:
    """The model's decode step of ``k`` at ``ctx``, a chunk alone and a mixed step, each the
    mean over the fresh prompt's 16 chunks."""
    decode = model.decode_steps_time(k, k * ctx, 1)
    n = FRESH // CHUNK
    chunk = model.prefill_time(FRESH, 0, chunk=CHUNK) / n
    mixed = 0.0
    for j in range(n):
        done = CHUNK * j
        attention = CHUNK * (done + (CHUNK + 1) / 2) + k * (ctx + 1)
        kv_read = done + CHUNK + k * (ctx + 1)
        mixed += model.step_time(CHUNK + k, attention, kv_read, k + 1)
    return decode, chunk, mixed / n


def mixed(out: Path, trials: int, shapes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Decodes beside a chunked prefill (see the module doc)."""
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    with engines(out, (CHUNK,), bench_kv=False) as (url,):
        for k, ctx in shapes:
            rows += asyncio.run(_mixed_trials(url, k, ctx, trials, rng))
    model = _model()
    for k, ctx in shapes:
        mine = [r for r in rows if r["k"] == k and r["ctx"] == ctx and r["mixed_step"]]
        if not mine:
            print(f"k={k} ctx={ctx}: the decodes ended before the prefill in every trial")
            continue
        decode, chunk, step = (statistics.median(r[key] for r in mine)
                               for key in ("decode_step", "chunk", "mixed_step"))
        m = _model_steps(model, k, ctx)
        print(f"k={k} ctx={ctx} ({len(mine)} trials): decode step {decode * 1e3:.1f} ms, chunk "
              f"alone {chunk * 1e3:.1f} ms, mixed step {step * 1e3:.1f} ms "
              f"(x{step / (chunk + decode):.2f} of the two); model {m[0] * 1e3:.1f}, "
              f"{m[1] * 1e3:.1f}, {m[2] * 1e3:.1f} ms")
    return rows


#: ``context``: the prompt lengths decoded from, and the decode steps timed at each
CONTEXTS = (1024, 2048, 4096, 6144)
DECODE_TOKENS = 48


def context(out: Path, rounds: int, contexts: Sequence[int]) -> list[dict[str, Any]]:
    """A lone sequence's decode step at each context (see the module doc)."""
    rng = np.random.default_rng(2)
    rows: list[dict[str, Any]] = []
    with engines(out, (0,), bench_kv=False) as (url,):
        _vllm_call(url, _fresh(rng, 256), 2)  # warm-up
        for r in range(rounds):
            for n in contexts if r % 2 == 0 else contexts[::-1]:
                reset_prefix_cache(url)
                prefill, decode = _vllm_call(url, _fresh(rng, n), DECODE_TOKENS)
                rows.append({"ctx": n, "round": r, "prefill": prefill,
                             "decode_step": decode / (DECODE_TOKENS - 1)})
    model = _model()
    low = statistics.median(x["decode_step"] for x in rows if x["ctx"] == contexts[0])
    low_model = model.step_time(1, contexts[0] + 1, contexts[0], 1)
    for n in contexts:
        step = statistics.median(x["decode_step"] for x in rows if x["ctx"] == n)
        m = model.step_time(1, n + 1, n, 1)
        print(f"ctx {n:5d}: decode step median {step * 1e3:.2f} ms (x{step / low:.2f} of "
              f"{contexts[0]}'s), model {m * 1e3:.2f} ms (x{m / low_model:.2f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("chunks", "mixed", "context"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=6, help="chunks, context: rounds per size")
    parser.add_argument("--trials", type=int, default=3, help="mixed: trials per shape")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "chunks":
        rows = chunks(args.out, args.rounds, (768, 1536, 3072))
    elif args.what == "context":
        rows = context(args.out, args.rounds, CONTEXTS)
    else:
        rows = mixed(args.out, args.trials, ((2, 2048), (4, 2048), (4, 3072), (8, 1536)))
    (args.out / f"{args.what}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
