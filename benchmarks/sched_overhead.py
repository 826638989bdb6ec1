"""Time per scheduling decision of the `saga` policy at cluster scale.

Builds 1,024 idle replicas and 100,000 live workflows (each in a tool call, homed on a
replica), then times the decisions the core makes per call: admit, place, queue key,
retention. Prints p50, p99 and mean in microseconds. Target (issue 5): p99 under 100 us.
Run: python benchmarks/sched_overhead.py [--replicas N] [--workflows N] [--samples N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.replica import Request
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.registry import build_policy
from saga.sim.cluster import get_cluster
from saga.sim.simulator import Simulation


def call_info(i: int, index: int, now: float) -> CallInfo:
    blocks = 200 + 20 * index
    return CallInfo(
        workflow=f"w{i}", tenant=f"t{i % 4}", agent="swe-agent", call_id=f"c{index}",
        index=index, tool="bash" if index else None, prompt_tokens=blocks * 64 + 4000,
        runs=(("s:sys", 0, 63), (f"w:w{i}", 0, blocks)), issued_at=now,
        workflow_arrival=0.0, slo=None, ends_workflow=False,
    )


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1e6
    p99 = ordered[int(0.99 * (len(ordered) - 1))] * 1e6
    return f"p50 {p50:8.1f} us   p99 {p99:8.1f} us   mean {statistics.fmean(ordered) * 1e6:8.1f} us"


def timed(fn: Callable[[int], object], samples: int) -> list[float]:
    out = []
    for k in range(samples):
        start = time.perf_counter()
        fn(k)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", default="saga")
    parser.add_argument("--replicas", type=int, default=1024)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()

    cluster = get_cluster("h100-64-8b").model_copy(update={"replicas": args.replicas})
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    sim = Simulation(cluster, build_policy(args.policy), [dummy])
    policy, replicas = sim.policy, sim.replicas
    rng = random.Random(0)
    started = time.perf_counter()
    for i in range(args.workflows):  # live workflows, each homed somewhere, in a tool call
        info = call_info(i, 0, 0.0)
        policy.admit(WorkflowInfo(info.workflow, info.tenant, info.agent, 0.0, None), 0.0)
        policy.on_call_ready(info, 0.0)
        policy.on_call_finished(info, rng.randrange(args.replicas), 1.0)
    print(f"{args.policy}: {args.replicas} replicas, {args.workflows:,} live workflows "
          f"(set up in {time.perf_counter() - started:.0f} s)")

    def place(k: int) -> None:
        info = call_info(k % args.workflows, 1, 2.0)
        policy.on_call_ready(info, 2.0)
        policy.place(info, 2.0)

    def admit(k: int) -> None:
        policy.admit(WorkflowInfo(f"new{k}", "t0", "swe-agent", 2.0, None), 2.0)

    replica = replicas[0]
    request = Request("w1", "c1", (("w:w1", 0, 200),), 200 * 64, 100, 64, 1,
                      info=call_info(1, 1, 2.0))
    request.generated = 100

    def retention(k: int) -> None:
        policy.retention(replica, request, 3.0)

    def queue_key(k: int) -> None:
        policy.queue_key(replica, request, 3.0)

    for name, fn in (("admit", admit), ("place", place), ("queue_key", queue_key),
                     ("retention", retention)):
        print(f"{name:10s} {percentiles(timed(fn, args.samples))}")


if __name__ == "__main__":
    main()
