"""How fast the engines ran during one recorded run of the real benchmark, from its lone calls.

A calibration probe times the engines before each repetition (saga.bench.probe); whether the
engines kept that speed through the repetition's runs, the runs themselves say: a call that
had its replica to itself (no other call of the run on that replica between its send and its
answer) ran at the engine's speed alone, so its latency over what a fixed preset gives for it
(its prefill past the cached prefix, then one decode step per further output token) is the
engine's speed at that moment over the preset's (>1: slower). Run by run in the order they
ran, the median of those ratios shows the engines' drift between and within repetitions
(docs/engines.md, "Simulator agreement under drift").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from saga.engine.costmodel import CostModel


def lone_calls(call_log: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """The answered calls of a run's ``call_log`` (runs.jsonl: workflow, index, sent,
    latency, replica, status, prompt and cached tokens) that had their replica to
    themselves."""
    return [c for c in call_log if c[5] == 200 and not any(
        o is not c and o[4] == c[4] and o[2] < c[2] + c[3] and c[2] < o[2] + o[3]
        for o in call_log)]


def lone_ratios(
    call_log: Sequence[Sequence[Any]], outputs: Mapping[tuple[str, int], int],
    cost: CostModel, *, chunk: int,
) -> list[float]:
    """Each lone call's latency over ``cost``'s time for it; ``outputs``: each call's output
    tokens by (workflow, index); ``chunk``: the engine's batched-token limit."""
    ratios = []
    for c in lone_calls(call_log):
        workflow, index, _, latency, _, _, prompt, cached = c
        modelled = (cost.prefill_time(prompt, cached, chunk=chunk)
                    + cost.decode_steps_time(1, prompt + 1, outputs[(workflow, index)] - 1))
        ratios.append(latency / modelled)
    return ratios
