"""The replay's heartbeat (saga.integrations.replay._watch) and the bench's report of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from saga.bench.real import RealBench, render_markdown, summarize
from saga.integrations.replay import STALL, TICK, _watch


def test_a_blocked_client_loop_is_recorded_as_a_stall() -> None:
    blocked = 2 * STALL + TICK

    async def main() -> list[tuple[float, float, float]]:
        stalls: list[tuple[float, float, float]] = []
        start = time.monotonic()
        watch = asyncio.create_task(_watch(start, stalls))
        await asyncio.sleep(2 * TICK)
        time.sleep(blocked)  # what a GIL-bound neighbour or a frozen host does to the loop
        await asyncio.sleep(2 * TICK)
        watch.cancel()
        return stalls

    stalls = asyncio.run(main())
    # time.sleep sleeps at least that long: the tick due inside it wakes that late, less
    # the part of its own period it had already waited
    assert any(late >= blocked - TICK for _, late, _ in stalls)
    assert all(late > STALL and cpu >= 0 for _, late, cpu in stalls)


def _run(policy: str, stalls: list[list[float]], gateway: Sequence[list[float]] = ()) -> dict:
    return {"case": "memory", "policy": policy, "repetition": 0, "tct": {"s000": 5.0},
            "failed": [], "calls": 4, "errors": 0, "wall": 5.0, "load": [1.0, 1.0],
            "prefix_queries": 1.0, "prefix_hits": 0.0, "retentions": {}, "prefix_lookups": [],
            "backends": [0], "deferred": {}, "stalls": stalls,
            "gateway_stalls": list(gateway)}


def test_the_summary_keeps_each_runs_worst_stall_and_the_report_names_it() -> None:
    spec = RealBench(policies=("saga", "llm-d"), repetitions=1)
    s = summarize(spec, [_run("saga", [[2.2, 0.4, 0.0], [3.0, 1.94, 0.1]]),
                         _run("llm-d", [], [[1.0, 0.3, 0.3]])], {}, quick=False, wall=1.0)
    assert [r["stall"] for r in s["cases"]["memory"]["saga"]["runs"]] == [1.94]
    llmd = s["cases"]["memory"]["llm-d"]["runs"]
    assert [(r["stall"], r["gateway_stall"]) for r in llmd] == [(0.0, 0.3)]
    text = render_markdown(s)
    assert "memory saga rep 0 1.94 s / 0.00 s" in text
    assert "memory llm-d rep 0 0.00 s / 0.30 s" in text
    quiet = summarize(spec, [_run("saga", []), _run("llm-d", [])], {}, quick=False, wall=1.0)
    assert "Stalls" not in render_markdown(quiet)
