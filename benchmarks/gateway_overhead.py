"""Latency the gateway adds in front of the emulator, next to sglang-router's.

Starts one emulator process (``--replicas`` replicas, time scale 1000, so the model's
own latency is microseconds), the saga gateway in front of it and, when the
``sglang-router`` package is installed, ``sglang_router.launch_router`` in front of
the same replicas. Then, at each rate, sends an open-loop stream of small
non-streaming chat calls three times: to the replicas directly (round robin), through
the gateway, through the router, and prints the p50 and p99 each adds over direct,
side by side, with the rate each achieved.

The load generator is open loop (a call every 1/rate s, whatever the answers) and
the same for every target. By default it sends with ``saga.gateway.upstream`` (keep-alive
connections, httptools), which costs less than half the CPU per call of aiohttp's client:
on a 2-core machine at 1,000 calls/s the generator, the proxy and the emulator share the
CPU, and a heavy generator adds contention to every target's latency, most to a proxy that
needs CPU itself. ``--client aiohttp`` uses aiohttp's client instead (docs/gateway.md has
the figures with both). The generator's garbage collector is paused during each measured
window (and run before it): it otherwise stopped the generator for up to 36 ms at a time,
which delayed the answers of whichever target was being measured.

Nothing is simulated on the way: after every run the emulators' own output-token
counters are read, and the calls they served must match the calls answered (column
``served``). Bounded: ``--seconds`` per rate and target (each run also stops waiting
``--seconds`` after its last send), 127.0.0.1 only, every process (and its process
group) stopped at the end. Without sglang-router its columns say why they are empty.

    python benchmarks/gateway_overhead.py --rates 200 500 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from saga.gateway.upstream import UpstreamError, UpstreamPool
from saga.integrations.engines import free_port

HOST = "127.0.0.1"
TARGETS = ("direct", "gateway", "router")


@dataclass
class Run:
    """One load run against one target at one rate."""

    latencies: list[float]
    errors: int
    sent: int
    elapsed: float  # first send to last answer (s)
    answered: int  # 200s, warm-up included

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _get(url: str, timeout: float = 1.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout:g}s")


def _served(urls: list[str]) -> int:
    """Output tokens the emulator replicas have produced (each call here makes one)."""
    return sum(int(_get(u + "/saga/state")["output_tokens"]) for u in urls)


Send = Callable[[int, bytes, dict[str, str]], Awaitable[int]]


@contextlib.asynccontextmanager
async def _aiohttp_client(urls: list[str], seconds: float) -> AsyncIterator[Send]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=max(10.0, seconds))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(i: int, body: bytes, headers: dict[str, str]) -> int:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status
            except (aiohttp.ClientError, TimeoutError):
                return 0

        yield send


@contextlib.asynccontextmanager
async def _lean_client(urls: list[str], seconds: float) -> AsyncIterator[Send]:
    pools = [UpstreamPool(u, connect_timeout=5.0, timeout=max(10.0, seconds)) for u in urls]

    async def send(i: int, body: bytes, headers: dict[str, str]) -> int:
        try:
            response = await pools[i % len(pools)].request(
                "POST", "/v1/chat/completions", body, headers)
            try:
                await response.read()
            finally:
                response.release()
            return response.status
        except (UpstreamError, TimeoutError):
            return 0

    try:
        yield send
    finally:
        for pool in pools:
            pool.close()


CLIENTS = {"lean": _lean_client, "aiohttp": _aiohttp_client}


async def _load(urls: list[str], rate: float, seconds: float, client: str = "lean") -> Run:
    """Open loop: one call every 1/rate s, round robin over ``urls``."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello " * 40}],
                       "max_tokens": 1}).encode()
    latencies: list[float] = []
    errors = answered = 0
    async with CLIENTS[client](urls, seconds) as send:

        async def one(i: int) -> None:
            nonlocal errors, answered
            headers = {"Content-Type": "application/json", "x-saga-workflow": f"bench-{i % 64}"}
            started = time.perf_counter()
            if await send(i, body, headers) != 200:
                errors += 1
                return
            answered += 1
            latencies.append(time.perf_counter() - started)

        # warm up connections (and the router's and gateway's first-call paths)
        await asyncio.gather(*(one(i) for i in range(24)))
        latencies.clear()
        errors = 0
        total = max(1, int(rate * seconds))
        gc.collect()
        gc.disable()  # a collection here would delay answers: the generator's, not the target's
        try:
            start = time.perf_counter()
            tasks = []
            for i in range(total):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            _, pending = await asyncio.wait(tasks, timeout=seconds + 10.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
        errors += len(pending)
    return Run(latencies, errors, total, elapsed, answered)


def _pct(data: list[float], q: float) -> float:
    if not data:
        return math.nan
    ordered = sorted(data)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run(coro: Coroutine[Any, Any, Run]) -> Run:
    """The load generator on uvloop when installed: it must not be the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _spawn(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # own process group: the whole tree is stopped at the end
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _router_unavailable() -> str | None:
    if importlib.util.find_spec("sglang_router") is None:
        return "sglang-router is not installed (pip install sglang-router)"
    return None


def _start_router(urls: list[str], policy: str, log: IO[bytes],
                  procs: list[subprocess.Popen[bytes]]) -> tuple[str | None, str]:
    """Start sglang-router; return its URL, or None and why it is not there."""
    port = free_port()
    proc = _spawn([sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *urls,
                   "--host", HOST, "--port", str(port), "--policy", policy,
                   "--log-level", "warn"], log)
    procs.append(proc)
    router = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:  # the router registers its workers in the background
        if proc.poll() is not None:
            return None, f"sglang-router exited with {proc.returncode} (log: {log.name})"
        try:
            workers = _get(router + "/workers").get("workers", [])
            if sum(bool(w.get("is_healthy")) for w in workers) >= len(urls):
                return router, ""
        except (OSError, ValueError, AttributeError):
            pass
        time.sleep(0.2)
    return None, f"sglang-router did not register {len(urls)} workers in 60 s (log: {log.name})"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _fmt(value: float, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[200, 500, 1000])
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate and target")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--router-policy", default="cache_aware",
                        help="sglang-router --policy (default cache_aware)")
    parser.add_argument("--no-router", action="store_true", help="skip sglang-router")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="lean",
                        help="load generator's HTTP client, the same for every target "
                        "(default lean: saga.gateway.upstream)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    emu_port = free_port()
    while not all(_bindable(emu_port + i) for i in range(args.replicas)):
        emu_port = free_port()  # replicas need consecutive ports
    gw_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logdir = Path(tempfile.mkdtemp(prefix="saga-overhead-"))
    logs = {name: (logdir / f"{name}.log").open("wb") for name in ("emulator", "gateway", "router")}
    try:
        emulator = _spawn(
            [sys.executable, "-m", "saga.emulator", "--replicas", str(args.replicas),
             "--cluster", "small", "--port", str(emu_port), "--time-scale", "1000"],
            logs["emulator"],
        )
        procs.append(emulator)
        urls = [f"http://{HOST}:{emu_port + i}" for i in range(args.replicas)]
        config = {"host": HOST, "port": gw_port, "policy": "vllm-affinity", "cluster": "small",
                  "backends": [{"url": u, "kind": "emulator"} for u in urls]}
        config_path = logdir / "gateway.json"
        config_path.write_text(json.dumps(config))
        gateway_proc = _spawn([sys.executable, "-m", "saga.gateway", "--config", str(config_path)],
                              logs["gateway"])
        procs.append(gateway_proc)
        for url in urls:
            _wait(url + "/health", emulator)
        gateway = f"http://{HOST}:{gw_port}"
        _wait(gateway + "/health", gateway_proc)

        targets: dict[str, list[str]] = {"direct": urls, "gateway": [gateway]}
        skipped = "--no-router" if args.no_router else _router_unavailable()
        if skipped is None:
            router, why = _start_router(urls, args.router_policy, logs["router"], procs)
            if router is None:
                skipped = why
            else:
                targets["router"] = [router]
        if skipped:
            print(f"sglang-router skipped: {skipped}", flush=True)

        rows: list[dict[str, Any]] = []
        print(f"{'':>6} {'direct':>15} | {'saga gateway (added)':>20} | "
              f"{'sglang-router (added)':>21} | {'achieved req/s':>22}")
        print(f"{'rate':>6} {'p50':>7} {'p99':>7} | {'p50':>9} {'p99':>10} | "
              f"{'p50':>10} {'p99':>10} | {'direct':>6} {'gw':>7} {'router':>7} "
              f"{'errors':>6} {'served':>7}")
        for rate in args.rates:
            row: dict[str, Any] = {"rate": rate}
            errors = served = answered = 0
            for name in TARGETS:
                if name not in targets:
                    row[f"{name}_p50_ms"] = row[f"{name}_p99_ms"] = math.nan
                    row[f"{name}_achieved"] = math.nan
                    continue
                before = _served(urls)
                run = _run(_load(targets[name], rate, args.seconds, args.client))
                served += _served(urls) - before
                answered += run.answered
                errors += run.errors
                row[f"{name}_p50_ms"] = 1e3 * _pct(run.latencies, 0.5)
                row[f"{name}_p99_ms"] = 1e3 * _pct(run.latencies, 0.99)
                row[f"{name}_achieved"] = run.achieved
                row[f"{name}_calls"] = len(run.latencies)
                row[f"{name}_errors"] = run.errors
            for name in ("gateway", "router"):
                for q in ("p50", "p99"):
                    row[f"{name}_added_{q}_ms"] = row[f"{name}_{q}_ms"] - row[f"direct_{q}_ms"]
            row["errors"] = errors
            # every answered call was served by an emulator (failed ones may be too)
            row["served_by_emulators"] = served
            row["served_ok"] = served >= answered
            rows.append(row)
            cells = [_fmt(row[k], w) for k, w in (
                ("direct_p50_ms", 7), ("direct_p99_ms", 7), ("gateway_added_p50_ms", 9),
                ("gateway_added_p99_ms", 10), ("router_added_p50_ms", 10),
                ("router_added_p99_ms", 10))]
            widths = zip(TARGETS, (6, 7, 7), strict=True)
            rates = [_fmt(row[f"{n}_achieved"], w, 0) for n, w in widths]
            print(f"{rate:>6g} {cells[0]} {cells[1]} | {cells[2]} {cells[3]} | {cells[4]} "
                  f"{cells[5]} | {' '.join(rates)} {errors:>6} "
                  f"{'ok' if row['served_ok'] else 'SHORT':>7}", flush=True)
        print("ms; added = the percentile through the proxy minus the same percentile direct; "
              f"client {args.client}; loadavg {_loadavg()}")
        if args.json is not None:
            result = {"rows": rows, "router_skipped": skipped or None, "client": args.client,
                      "router_policy": args.router_policy, "seconds": args.seconds,
                      "replicas": args.replicas}
            args.json.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    finally:
        _stop(procs)
        for log in logs.values():
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
