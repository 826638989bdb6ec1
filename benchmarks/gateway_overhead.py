"""Latency the gateway adds in front of the emulator, at fixed request rates.

Starts an emulator (time scale 1000, so the model's own latency is microseconds)
and a gateway on loopback, then sends an open-loop stream of small non-streaming
chat calls at each rate, first to the emulator directly, then through the gateway,
and reports p50 and p99 of each and their difference. Bounded: ``--seconds`` per
rate and run, 127.0.0.1 only, every process stopped at the end.

    python benchmarks/gateway_overhead.py --rates 200 500 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _load(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop: one call every 1/rate s; returns latencies (s) and errors."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hello " * 40}],
            "max_tokens": 1}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                async with session.post(
                    url + "/v1/chat/completions", json=body,
                    headers={"x-saga-workflow": f"bench-{i % 64}"},
                ) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)

        # warm up connections
        await asyncio.gather(*(one(-i) for i in range(1, 20)))
        latencies.clear()
        total = int(rate * seconds)
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return latencies, errors


def _pct(data: list[float], q: float) -> float:
    if not data:
        return float("nan")
    ordered = sorted(data)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[200, 500, 1000])
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate and target")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    emu_port = _free_port()
    while True:  # replicas need consecutive ports
        if all(_bindable(emu_port + i) for i in range(args.replicas)):
            break
        emu_port = _free_port()
    gw_port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "saga.emulator", "--replicas", str(args.replicas),
             "--cluster", "small", "--port", str(emu_port), "--time-scale", "1000"],
            stdout=subprocess.DEVNULL,
        ))
        urls = [f"http://{HOST}:{emu_port + i}" for i in range(args.replicas)]
        config = {"host": HOST, "port": gw_port, "policy": "vllm-affinity", "cluster": "small",
                  "backends": [{"url": u, "kind": "emulator"} for u in urls]}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(config, f)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "saga.gateway", "--config", f.name], stdout=subprocess.DEVNULL
        ))
        for url in urls:
            _wait(url + "/health")
        gateway = f"http://{HOST}:{gw_port}"
        _wait(gateway + "/health")
        rows = []
        print(f"{'rate':>6} {'direct p50':>11} {'p99':>8} {'gateway p50':>12} {'p99':>8} "
              f"{'added p50':>10} {'added p99':>10} {'errors':>7}")
        for rate in args.rates:
            # direct: spread over the replicas as the gateway would (one target suffices
            # for the emulator's per-call cost; use replica 0)
            direct, e1 = _run(_load(urls[0], rate, args.seconds))
            via, e2 = _run(_load(gateway, rate, args.seconds))
            row = {
                "rate": rate,
                "direct_p50_ms": 1e3 * _pct(direct, 0.5), "direct_p99_ms": 1e3 * _pct(direct, 0.99),
                "gateway_p50_ms": 1e3 * _pct(via, 0.5), "gateway_p99_ms": 1e3 * _pct(via, 0.99),
                "errors": e1 + e2, "calls": len(direct) + len(via),
            }
            row["added_p50_ms"] = row["gateway_p50_ms"] - row["direct_p50_ms"]
            row["added_p99_ms"] = row["gateway_p99_ms"] - row["direct_p99_ms"]
            rows.append(row)
            print(f"{rate:>6g} {row['direct_p50_ms']:>11.3f} {row['direct_p99_ms']:>8.3f} "
                  f"{row['gateway_p50_ms']:>12.3f} {row['gateway_p99_ms']:>8.3f} "
                  f"{row['added_p50_ms']:>10.3f} {row['added_p99_ms']:>10.3f} {row['errors']:>7}",
                  flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def _run(coro: Coroutine[Any, Any, tuple[list[float], int]]) -> tuple[list[float], int]:
    """The load generator on uvloop when installed: it must not be the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
