"""The engines' speed a recorded run's lone calls say (saga.bench.real_drift)."""

from __future__ import annotations

import pytest

from saga.bench.real_drift import lone_calls, lone_ratios
from saga.engine.cluster import get_cluster

CHUNK = 4096


def test_only_calls_alone_on_their_replica_count_each_at_its_latency_over_the_model() -> None:
    cost = get_cluster("cpu-tiny").cost_model()

    def modelled(prompt: int, cached: int, output: int) -> float:
        return (cost.prefill_time(prompt, cached, chunk=CHUNK)
                + cost.decode_steps_time(1, prompt + 1, output - 1))

    outputs = {("s000", 0): 32, ("s000", 1): 32, ("s001", 0): 8, ("s002", 0): 32,
               ("s003", 0): 32}
    a = ["s000", 0, 0.0, 0.8 * modelled(2000, 0, 32), 0, 200, 2000, 0]
    # on replica 0 while c runs: neither counts
    b = ["s000", 1, 10.0, 1.0, 0, 200, 2100, 1920]
    c = ["s001", 0, 10.5, 0.2, 0, 200, 900, 0]
    # alone on replica 1, though b and c overlap it in time on replica 0
    d = ["s002", 0, 10.2, 1.5 * modelled(3000, 2944, 32), 1, 200, 3000, 2944]
    e = ["s003", 0, 20.0, 0.1, 1, 503, 3000, 0]  # refused: not a timing
    log = [a, b, c, d, e]
    assert lone_calls(log) == [a, d]
    assert lone_ratios(log, outputs, cost, chunk=CHUNK) == pytest.approx([0.8, 1.5])
    # calls that only touch end to start are alone
    f = ["s001", 0, 10.0 + 1.0, 0.2, 0, 200, 900, 0]
    assert lone_calls([b, f]) == [b, f]
