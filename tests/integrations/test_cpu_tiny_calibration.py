"""The ``cpu-tiny`` preset against the vLLM-CPU engines as `saga bench real` runs them.

The points in data/cpu_tiny_bench.json were measured by the real benchmark itself on this
project's 2-core machines (how and when: in the file; extracted with
``benchmarks/sim_real_agreement.py --points``): every call that had its replica to itself,
with its latency as the client saw it. They are data, so this test runs everywhere and
needs no engine. The preset is fitted to them; the memory-bound case's engine-log
throughput, 1.29x slower with both engines busy, is the ``cpu-tiny`` cluster's host
contention (docs/engines.md "cpu-tiny calibration"). The calls' latencies are checked by
groups of computed prompt tokens: each group's median ratio of measured to predicted
within 25 %. Re-measure and re-fit when vLLM, the machine
kind or the bench's engine layout changes. (data/cpu_tiny_vllm.json is the previous
calibration: one engine alone, AMD EPYC machines under load ~4; kept for the record.)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from saga.engine.costmodel import cost_model_for

DATA = Path(__file__).parent / "data" / "cpu_tiny_bench.json"
TOLERANCE = 0.25
#: computed prompt tokens (prompt - cached) of the groups checked
GROUPS = ((0, 256), (256, 1024), (1024, 2048), (2048, 3072))


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    return data


def _predicted(call: dict[str, Any], chunk: int) -> float:
    """One call alone on a replica: its prefill past the cached prefix (the step that
    ends it samples the first token), then its other output tokens one decode step each."""
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    prompt, output = int(call["prompt"]), int(call["output"])
    prefill = cost.prefill_time(prompt, int(call["cached"]), chunk=chunk)
    return prefill + cost.decode_steps_time(1, prompt + 1, output - 1)


def test_data_says_how_and_when_it_was_measured() -> None:
    data = _load()
    for key in ("measured_at", "engine", "server_args", "machine", "method", "note"):
        assert data[key], key
    calls = data["solo_calls"]
    assert {c["case"] for c in calls} == {"memory", "light"}
    for lo, hi in GROUPS:
        assert sum(lo <= c["prompt"] - c["cached"] < hi for c in calls) >= 10, (lo, hi)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: f"computed{g[0]}-{g[1]}")
def test_solo_call_latencies(group: tuple[int, int]) -> None:
    data = _load()
    chunk = int(data["max_num_batched_tokens"])
    lo, hi = group
    calls = [c for c in data["solo_calls"] if lo <= c["prompt"] - c["cached"] < hi]
    ratio = statistics.median(c["latency"] / _predicted(c, chunk) for c in calls)
    assert ratio == pytest.approx(1.0, rel=TOLERANCE)
