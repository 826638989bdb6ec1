"""What reading vLLM's KV events costs on the Ray path: the replica's report, the router.

Two figures, in CPU time (``time.process_time``; the machine may be loaded):

* the replica's ``record_routing_stats()`` report (:class:`saga.integrations.ray.vllm.
  PrefixReport`) of ``--workflows`` workflows whose prompts span ``--blocks`` of vLLM's
  blocks each, in a :class:`saga.gateway.kv_events.KVIndex` fed as vLLM's events would
  feed it: made afresh (after an event) and repeated (no event since);
* the router's decision (:meth:`saga.integrations.ray.routing.SagaRouting.route` and the
  call's end), for agent workflows calling again, without a report and with one naming
  every workflow (the view cuts its estimate with it, :mod:`saga.integrations.ray.prefixes`).

    python benchmarks/ray_events_overhead.py --workflows 256 --blocks 500 --calls 2000
"""

from __future__ import annotations

import argparse
import statistics
import time

from saga.gateway.kv_events import KVIndex
from saga.integrations.ray.call import RayCall
from saga.integrations.ray.routing import SagaRouting, Tiers
from saga.integrations.ray.view import ReplicaStats
from saga.integrations.ray.vllm import PrefixReport
from saga.wire.prefix import estimate_tokens, text_runs

ENGINE_BLOCK = 16


def _index(workflows: int, blocks: int) -> KVIndex:
    index = KVIndex()
    for w in range(workflows):
        hashes = [w * 1_000_000 + b for b in range(blocks)]
        index.apply_batch(w, [{"type": "BlockStored", "block_hashes": hashes,
                               "parent_block_hash": None, "token_ids": [],
                               "block_size": ENGINE_BLOCK, "medium": "GPU",
                               "session_id": f"w{w}"}])
    return index


def report_cost(workflows: int, blocks: int, repeats: int) -> tuple[float, float]:
    """CPU ms of one report made afresh, and of one repeated (medians)."""
    index = _index(workflows, blocks)
    report = PrefixReport(index, limit=workflows)
    for w in range(workflows):
        report.served(f"w{w}", blocks * ENGINE_BLOCK, blocks * ENGINE_BLOCK)
    fresh, repeated = [], []
    for i in range(repeats):
        index.apply_batch(workflows + i, [])  # an event: the next report is made afresh
        t0 = time.process_time()
        report.report(ENGINE_BLOCK)
        fresh.append(time.process_time() - t0)
        t0 = time.process_time()
        report.report(ENGINE_BLOCK)
        repeated.append(time.process_time() - t0)
    return statistics.median(fresh) * 1e3, statistics.median(repeated) * 1e3


def _call(workflow: str, turn: int) -> RayCall:
    text = f"{workflow} context " * (200 + 20 * turn)
    return RayCall(workflow=workflow, tenant="default", agent="coder",
                   tool="bash" if turn else None, ends=False, kind="chat", model="m",
                   messages=[], prompt_tokens=estimate_tokens(text),
                   runs=text_runs(text, 64), max_tokens=16)


def decision_cost(workflows: int, calls: int, with_report: bool) -> float:
    """CPU microseconds per call (route, sent, completed), median over batches."""
    routing = SagaRouting("saga", slots=2, cluster="small")
    routing.update_replicas(["r-a", "r-b"])
    names = [f"w{w}" for w in range(workflows)]
    if with_report:
        report = {name: 4_000 for name in names}
        for replica in ("r-a", "r-b"):
            routing.report(replica, ReplicaStats(prefix_tokens=report))
    samples = []
    now = 0.0
    batch = 100
    for start in range(0, calls, batch):
        t0 = time.process_time()
        for i in range(start, min(start + batch, calls)):
            name = names[i % workflows]
            rid = f"q{i}"
            decision = routing.route(rid, _call(name, i // workflows), now)
            if isinstance(decision, Tiers):
                routing.sent(rid, decision.ranks[0][0], now)
                routing.completed(rid, now + 0.001)
            now += 0.002
        samples.append((time.process_time() - t0) / batch)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=500, help="vLLM blocks per prompt")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    fresh, repeated = report_cost(args.workflows, args.blocks, args.repeats)
    print(f"replica report, {args.workflows} workflows x {args.blocks} blocks: "
          f"{fresh:.2f} ms CPU afresh, {repeated:.3f} ms repeated (median)")
    for with_report in (False, True):
        cost = decision_cost(args.workflows, args.calls, with_report)
        label = "with a report naming every workflow" if with_report else "without events"
        print(f"router, route + sent + completed, {label}: {cost:.0f} us CPU per call "
              f"(median of batches of 100)")


if __name__ == "__main__":
    main()
