"""Soak the gateway: a steady load for a bounded time, with faults, then look for leaks.

    python scripts/soak.py --minutes 30 --rate 200          # the target run
    python scripts/soak.py --minutes 5 --rate 100 --json soak.json

Starts on loopback (and stops at the end, whatever happens) a ``redis-server``, emulator
replicas (one process each, so that one can be restarted) and a gateway (policy saga,
Redis store, two tenants, closed admin pages) as separate processes, then sends chat
calls open loop at ``--rate`` per second for ``--minutes``: agent sessions as coding agents
send them (no SAGA header: a Claude Code session header, tool calls in the messages; 3 to
8 calls each, one at a time, ``max_tokens`` 1 so that each served call is one output token
at the emulator), of which ``--disconnect`` leave before the answer. At a third of the run
emulator 0 is killed and started again 2 s later; at two thirds Redis is (its data lost).
With ``--trace-malloc`` the gateway runs under tracemalloc (``scripts/soak_traced_gateway.py``)
and the report gains ``trace_malloc``: what grew from the start to the end by source line
and by traceback, the live objects by type that grew, and the Python-level traced memory
and glibc heap beside the RSS (to tell a leak from the allocator's warm-up).

Reported at start (after a warm-up) and at the end: the gateway's RSS and open files, the
Redis keys, the slot files (llama.cpp backends only: none here), the gateway's sessions in
the store and evictions; and over the run: calls sent and answered by status, calls lost
(no answer, or a 5xx, other than the deliberate disconnects) and calls answered twice (the
emulators' served calls beyond the 200s, less the disconnected calls they may have served).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from saga.integrations.ports import free_ports

HOST = "127.0.0.1"
ADMIN = "sk-soak-admin"
TENANT_KEYS = {"alpha": "sk-soak-alpha", "beta": "sk-soak-beta"}
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up after {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Cluster:
    """The processes under test, each restartable."""

    def __init__(self, replicas: int, time_scale: float, workdir: Path,
                 trace_frames: int = 0) -> None:
        self.workdir = workdir
        # > 0: the gateway runs under tracemalloc; -1: the same wrapper, tracing off
        self.trace_frames = trace_frames
        self.time_scale = time_scale
        # one block of consecutive ports: distinct by construction (separate random picks
        # could draw the same port twice)
        base = free_ports(replicas + 2)
        self.redis_port = base
        self.emulator_ports = [base + 1 + i for i in range(replicas)]
        self.gateway_port = base + 1 + replicas
        self.redis: subprocess.Popen[bytes] | None = None
        self.emulators: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self.gateway: subprocess.Popen[bytes] | None = None
        self.served_before_restarts = 0  # output tokens of emulator processes since stopped

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("soak: redis-server is not installed")
        self.redis = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", HOST, "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), \
                    socket.create_connection((HOST, self.redis_port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def start_emulator(self, i: int) -> None:
        port = self.emulator_ports[i]
        proc = subprocess.Popen(
            [sys.executable, "-m", "saga.emulator", "--replicas", "1", "--cluster", "small",
             "--port", str(port), "--time-scale", str(self.time_scale)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        self.emulators[i] = proc
        _wait(f"http://{HOST}:{port}/health", proc)

    def stop_emulator(self, i: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.served_before_restarts += self._served(i)
        _stop(self.emulators[i])
        self.emulators[i] = None

    def _served(self, i: int) -> int:
        url = f"http://{HOST}:{self.emulator_ports[i]}/saga/state"
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(json.loads(response.read())["output_tokens"])

    def served(self) -> int:
        return self.served_before_restarts + sum(
            self._served(i) for i, p in enumerate(self.emulators) if p is not None)

    def start_gateway(self) -> None:
        config = {
            "host": HOST, "port": self.gateway_port, "policy": "saga", "cluster": "small",
            "admin_keys": [ADMIN], "workflow_idle_timeout": 5.0, "session_ttl": 60.0,
            "health_interval": 0.5, "retries": 2, "max_pending": 8192,
            "tenants": {name: {"keys": [key]} for name, key in TENANT_KEYS.items()},
            "store": {"kind": "redis", "url": f"redis://{HOST}:{self.redis_port}/0",
                      "max_sessions": 2000},
            "backends": [{"url": f"http://{HOST}:{p}", "kind": "emulator",
                          "max_concurrency": 64} for p in self.emulator_ports],
        }
        path = self.workdir / "gateway.json"
        path.write_text(json.dumps(config))
        log = (self.workdir / "gateway.log").open("wb")
        command = [sys.executable, "-m", "saga.gateway", "--config", str(path)]
        if self.trace_frames:
            command = [sys.executable, str(ROOT / "scripts" / "soak_traced_gateway.py"),
                       "--config", str(path), "--out", str(self.workdir),
                       "--frames", str(max(0, self.trace_frames))]
        self.gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=_env())
        # imports under tracemalloc are several times slower
        _wait(self.url + "/health", self.gateway, 180.0 if self.trace_frames else 30.0)

    def snapshot(self, n: int, timeout: float = 300.0) -> dict[str, Any]:
        """Have the traced gateway write its snapshot ``n``; its facts once written."""
        assert self.gateway is not None and self.trace_frames
        self.gateway.send_signal(signal.SIGUSR1)
        path = self.workdir / f"snapshot-{n}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline or self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway wrote no {path.name}")
            time.sleep(0.2)
        facts: dict[str, Any] = json.loads(path.read_text())
        return facts

    def stop(self) -> None:
        _stop(self.gateway)
        for i in range(len(self.emulators)):
            _stop(self.emulators[i])
        _stop(self.redis)


def probe(cluster: Cluster) -> dict[str, Any]:
    """The leak figures: gateway RSS and open files, Redis keys, slot files, store."""
    assert cluster.gateway is not None
    pid = cluster.gateway.pid
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    keys: int | None = None
    with contextlib.suppress(OSError), \
            socket.create_connection((HOST, cluster.redis_port), timeout=2) as s:
        s.sendall(b"DBSIZE\r\n")
        keys = int(s.recv(64).decode().strip().lstrip(":"))
    for attempt in range(3):  # a gateway on a loaded machine may answer late
        try:
            metrics = _metrics(cluster.url)
            break
        except OSError:
            if attempt == 2:
                raise
            time.sleep(5)
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "redis_keys": keys,
        "slot_files": int(metrics.get("saga_slot_files", 0)),
        "store_sessions": metrics.get("saga_store_sessions"),
        "sessions_evicted": metrics.get("saga_store_sessions_evicted_total", 0),
        "workflows_active": metrics.get("saga_workflows_active"),
    }


def malloc_growth(workdir: Path, start: dict[str, Any], end: dict[str, Any],
                  top: int = 15) -> dict[str, Any]:
    """What the traced gateway allocated and kept between its snapshots 0 and 1: the
    biggest growth by source line and by traceback, the object types whose live count
    grew, and the memory figures of both ends."""
    import tracemalloc

    a, b = start.pop("objects_by_type"), end.pop("objects_by_type")
    grown = sorted(((b.get(t, 0) - a.get(t, 0), t) for t in set(a) | set(b)), reverse=True)
    out = {"start": start, "end": end,
           "traced_growth_kib": round((end["traced_bytes"] - start["traced_bytes"]) / 1024, 1),
           "rss_growth_kib": end["rss_kb"] - start["rss_kb"],
           "objects_grown": [{"type": t, "delta": d, "end": b.get(t, 0)}
                             for d, t in grown[:top] if d > 0]}
    if not (workdir / "snapshot-0.tracemalloc").exists():  # --heap: figures only
        return out
    old = tracemalloc.Snapshot.load(str(workdir / "snapshot-0.tracemalloc"))
    new = tracemalloc.Snapshot.load(str(workdir / "snapshot-1.tracemalloc"))

    def where(frame: tracemalloc.Frame) -> str:
        name = frame.filename
        for marker in ("/site-packages/", "/src/", "/lib/python3"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        return f"{name}:{frame.lineno}"

    by_line = [{"at": where(d.traceback[-1]), "kib": round(d.size_diff / 1024, 1),
                "blocks": d.count_diff}
               for d in new.compare_to(old, "lineno")[:top]]
    by_trace = [{"kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff,
                 "traceback": [where(f) for f in reversed(d.traceback)][:8]}
                for d in new.compare_to(old, "traceback")[:top]]
    return {**out, "top_by_line": by_line, "top_by_traceback": by_trace}


def _metrics(url: str) -> dict[str, float]:
    request = urllib.request.Request(url + "/metrics",
                                     headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            out[base] = out.get(base, 0.0) + float(value)
    return out


# ---- the load ---------------------------------------------------------------------------------

SYSTEM = ("You are Claude Code, Anthropic's official CLI for Claude. You help users with "
          "software engineering tasks. ") * 8
TOOLS = ("Grep", "Read", "Edit", "Bash")


@dataclass
class Session:
    """One coding-agent session: its headers and the conversation so far."""

    tenant: str
    calls_left: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    busy: bool = False


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    sessions: int = 0
    skipped: int = 0  # ticks with every session busy and the session cap reached


def new_session(rng: random.Random, n: int) -> Session:
    tenant = "alpha" if n % 2 else "beta"
    s = Session(tenant, rng.randint(3, 8))
    s.headers = {"Authorization": f"Bearer {TENANT_KEYS[tenant]}",
                 "Content-Type": "application/json",
                 "User-Agent": "claude-cli/2.0.14 (external, cli)",
                 "X-Claude-Code-Session-Id": str(uuid.UUID(int=rng.getrandbits(128)))}
    s.messages = [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": f"task {n}: fix the failing test " * 4}]
    return s


async def one_call(http: aiohttp.ClientSession, url: str, s: Session, tally: Tally,
                   rng: random.Random, disconnect: float) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": s.messages}
    leave = rng.random() < disconnect
    tally.sent += 1
    try:
        if leave:
            # the client leaves before the answer: a short timeout closes the connection
            with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError):
                async with asyncio.timeout(rng.uniform(0.0005, 0.005)):
                    async with http.post(url, json=body, headers=s.headers) as response:
                        await response.read()
                        tally.statuses[str(response.status)] += 1
                        return
            tally.disconnects += 1
            return
        async with http.post(url, json=body, headers=s.headers) as response:
            await response.read()
            tally.statuses[str(response.status)] += 1
            if response.status != 200:
                return
    except (TimeoutError, aiohttp.ClientError) as error:
        tally.statuses[f"error:{type(error).__name__}"] += 1
        return
    finally:
        s.busy = False
    tool = rng.choice(TOOLS)
    call_id = f"call_{rng.getrandbits(32):08x}"
    s.messages = [*s.messages,
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": call_id, "type": "function",
                       "function": {"name": tool, "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": call_id, "content": f"{tool} output " * 20}]
    s.calls_left -= 1


async def drive(cluster: Cluster, seconds: float, rate: float, disconnect: float,
                faults: list[tuple[float, str]], tally: Tally, seed: int,
                samples: list[dict[str, Any]] | None = None, every: float = 30.0) -> list[str]:
    rng = random.Random(seed)
    url = cluster.url + "/v1/chat/completions"
    sessions: list[Session] = []
    tasks: set[asyncio.Task[None]] = set()
    events: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        start = loop.time()
        pending_faults = sorted(faults)
        next_sample = every if samples is not None else float("inf")
        k = 0
        while True:
            now = loop.time() - start
            if now >= seconds:
                break
            if now >= next_sample and samples is not None:
                next_sample += every
                task = asyncio.ensure_future(_sample(cluster, now, samples))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while pending_faults and pending_faults[0][0] <= now:
                _, what = pending_faults.pop(0)
                events.append(f"{now:7.1f}s {what}")
                task = asyncio.ensure_future(asyncio.to_thread(_fault, cluster, what))
                tasks.add(task)  # type: ignore[arg-type]
                task.add_done_callback(tasks.discard)  # type: ignore[arg-type]
            sessions = [s for s in sessions if s.calls_left > 0]
            idle = [s for s in sessions if not s.busy]
            if idle and (len(sessions) >= 400 or rng.random() < 0.8):
                s = rng.choice(idle)
            elif len(sessions) < 400:
                tally.sessions += 1
                s = new_session(rng, tally.sessions)
                sessions.append(s)
            else:
                tally.skipped += 1
                s = None
            if s is not None:
                s.busy = True
                t = asyncio.ensure_future(one_call(http, url, s, tally, rng, disconnect))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            k += 1
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return events


async def _sample(cluster: Cluster, now: float, samples: list[dict[str, Any]]) -> None:
    with contextlib.suppress(OSError, ValueError):
        got = await asyncio.to_thread(probe, cluster)
        samples.append({"t": round(now), "rss_mb": got["rss_mb"],
                        "open_files": got["open_files"], "redis_keys": got["redis_keys"],
                        "load_1m": os.getloadavg()[0]})


def _fault(cluster: Cluster, what: str) -> None:
    if what == "restart emulator 0":
        cluster.stop_emulator(0)
        time.sleep(2)
        cluster.start_emulator(0)
    elif what == "restart redis":
        _stop(cluster.redis)
        time.sleep(2)
        cluster.start_redis()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="load time (default 30)")
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second (200)")
    parser.add_argument("--replicas", type=int, default=2, help="emulator replicas (2)")
    parser.add_argument("--time-scale", type=float, default=1000.0,
                        help="emulator time scale (default 1000: calls take about a ms)")
    parser.add_argument("--disconnect", type=float, default=0.02,
                        help="fraction of calls whose client leaves early (0.02)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds of load before the start figures (60): the gateway's "
                        "bounded tables (prefix index, latency reservoirs, sessions) fill")
    parser.add_argument("--sample", type=float, default=30.0,
                        help="seconds between samples of RSS, open files, Redis keys (30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--trace-malloc", type=int, nargs="?", const=12, default=0,
                        metavar="FRAMES", help="run the gateway under tracemalloc (traceback "
                        "depth FRAMES, 12 if not given) and report what grew between the "
                        "start and the end figures (the gateway is slower so)")
    parser.add_argument("--heap", action="store_true",
                        help="without tracemalloc (full speed), still report the gateway's "
                        "glibc heap, RSS after malloc_trim and live objects by type, start "
                        "and end")
    args = parser.parse_args()
    if args.heap and not args.trace_malloc:
        args.trace_malloc = -1  # the wrapper without tracing
    seconds = args.minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="saga-soak-"))
    cluster = Cluster(args.replicas, args.time_scale, workdir, args.trace_malloc)
    tally = Tally()
    report: dict[str, Any] = {"minutes": args.minutes, "rate": args.rate,
                              "replicas": args.replicas, "disconnect": args.disconnect,
                              "load_average": {"start": os.getloadavg()}}
    try:
        cluster.start_redis()
        for i in range(args.replicas):
            cluster.start_emulator(i)
        cluster.start_gateway()
        warm = min(args.warmup, seconds / 4)
        asyncio.run(drive(cluster, warm, args.rate, args.disconnect, [], tally, args.seed))
        served_0 = cluster.served()
        ok_0 = tally.statuses["200"]
        disconnects_0 = tally.disconnects
        report["start"] = probe(cluster)
        traced_0 = cluster.snapshot(0) if args.trace_malloc else None
        faults = [(seconds / 3, "restart emulator 0"), (2 * seconds / 3, "restart redis")]
        tally = Tally(sessions=tally.sessions)
        t0 = time.monotonic()
        samples: list[dict[str, Any]] = []
        events = asyncio.run(drive(cluster, seconds, args.rate, args.disconnect, faults, tally,
                                   args.seed + 1, samples, args.sample))
        report["samples"] = samples
        elapsed = time.monotonic() - t0
        time.sleep(1.0)
        report["load_average"]["end"] = os.getloadavg()
        report["end"] = probe(cluster)
        if traced_0 is not None:
            report["trace_malloc"] = malloc_growth(workdir, traced_0, cluster.snapshot(1))
        served = cluster.served() - served_0
        del ok_0, disconnects_0
        answered = tally.statuses["200"]
        lost = sum(n for st, n in tally.statuses.items() if st not in ("200", "429"))
        report.update({
            "events": events, "seconds": round(elapsed, 1), "sent": tally.sent,
            "achieved_rate": round(tally.sent / elapsed, 1), "statuses": dict(tally.statuses),
            "client_disconnects": tally.disconnects, "sessions": tally.sessions,
            "skipped_ticks": tally.skipped, "lost": lost,
            "served_by_backends": served,
            "answered_twice_bound": max(0, served - answered - tally.disconnects),
            "rss_growth_pct": round(100 * (report["end"]["rss_mb"] / report["start"]["rss_mb"]
                                           - 1), 1),
        })
    finally:
        cluster.stop()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    raise SystemExit(main())
