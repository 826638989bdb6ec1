"""Start and stop real processes on loopback for the end-to-end tests.

Every process binds 127.0.0.1 only, is waited for with a bounded poll, and is
terminated (then killed) at the end, whatever happened.

The start-up deadlines are generous (:data:`START_DEADLINE`): a gateway or emulator
imports for about a CPU second, which at load 20-30 on two cores took more than the
20 s once allowed. A slow start is waited for; a process that exits fails the wait at
once (``proc``), so the long deadline only bounds a process that hangs.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saga.integrations.ports import free_ports

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
#: Seconds a started process may take to answer (see the module's docstring).
START_DEADLINE = 180.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


def wait_http(url: str, timeout: float = START_DEADLINE,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {out}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            # HTTPException: polling a port nobody listens on yet can connect the socket to
            # itself (TCP self-connect) and read back its own request as a "status line"
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not up after {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def emulator(replicas: int = 2, cluster: str = "test-2", time_scale: float = 20.0,
             extra: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Emulated replicas; yields their base URLs."""
    port = free_ports(replicas)
    proc = subprocess.Popen(
        [sys.executable, "-m", "saga.emulator", "--replicas", str(replicas), "--cluster",
         cluster, "--port", str(port), "--time-scale", str(time_scale), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(),
    )
    urls = [f"http://{HOST}:{port + i}" for i in range(replicas)]
    try:
        for url in urls:
            wait_http(url + "/health", proc=proc)
        yield urls
    finally:
        _stop(proc)


@contextmanager
def gateway(config: dict[str, Any], tmp: Path) -> Iterator[str]:
    """A gateway process with ``config`` (port chosen here); yields its base URL."""
    port = free_ports(1)
    path = tmp / f"gateway-{port}.json"
    if not config.get("admin_keys"):  # these tests scrape /metrics with no key
        config = {"public_metrics": True, **config}
    path.write_text(json.dumps({**config, "host": HOST, "port": port}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "saga.gateway", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(),
    )
    url = f"http://{HOST}:{port}"
    try:
        wait_http(url + "/health", proc=proc)
        yield url
    finally:
        _stop(proc)


@contextmanager
def redis_on(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway redis-server on loopback ``port`` with no persistence, answering PING;
    stopped at the end (woken first if a test paused it with SIGSTOP)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        _stop(proc)


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    port = free_ports(1)
    with redis_on(port):
        yield f"redis://{HOST}:{port}/0"


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None
