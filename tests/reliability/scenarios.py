"""Reliability scenarios on real processes (loopback only), shared by the tests and by
``scripts/reliability.py``, which runs them larger and writes docs/RELIABILITY.md.

Each scenario returns a :class:`Outcome`: what was tried, how many times, what came
back, and whether that is what it must be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gateway"))

from saga_procs import (  # noqa: E402
    HOST,
    _env,
    _stop,
    emulator,
    free_ports,
    gateway,
    metric_value,
    redis_server,
    wait_http,
)

MODEL = "saga-test"
TENANTS = {"alpha": {"keys": ["sk-alpha-7f3a9c"]}, "beta": {"keys": ["sk-beta-51d2e8"]}}
ADMIN = "sk-admin-c0ffee42"
ALPHA = "sk-alpha-7f3a9c"
BETA = "sk-beta-51d2e8"


@dataclass
class Outcome:
    """One row of the report."""

    area: str
    what: str
    tried: int
    result: str
    ok: bool
    details: dict[str, Any] = field(default_factory=dict)


# ---- HTTP helpers ------------------------------------------------------------------------
def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def chat(url: str, key: str | None, workflow: str | None = None, max_tokens: int = 4,
         content: str = "hello", extra: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", **(extra or {})}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if workflow:
        headers["x-saga-workflow"] = workflow
    body = json.dumps({"model": MODEL, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": content}]}).encode()
    return http("POST", url + "/v1/chat/completions", body, headers, timeout)


def gateway_config(urls: list[str], **extra: Any) -> dict[str, Any]:
    concurrency = extra.pop("max_concurrency", 8)
    kind = extra.pop("kind", "emulator")
    return {"policy": "vllm-least-loaded", "cluster": "test-2", "served_models": [MODEL],
            "tenants": TENANTS, "health_interval": 0.3, "admin_keys": [ADMIN],
            "backends": [{"url": u, "kind": kind, "max_concurrency": concurrency} for u in urls],
            **extra}


@contextmanager
def process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    try:
        yield proc
    finally:
        _stop(proc)


def start_emulator(port: int, time_scale: float = 20.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "saga.emulator", "--replicas", "1", "--cluster", "test-2",
         "--port", str(port), "--time-scale", str(time_scale)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    wait_http(f"http://{HOST}:{port}/health", proc=proc)
    return proc


def fake_backend(port: int, mode: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_backend.py"), str(port), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    wait_http(f"http://{HOST}:{port}/health", proc=proc)
    return proc


def health(url: str) -> dict[str, Any]:
    _, _, body = http("GET", url + "/health")
    result: dict[str, Any] = json.loads(body)
    return result


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def admin_metrics(url: str) -> str:
    _, _, body = http("GET", url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    return body.decode()


# ---- 1. faults -----------------------------------------------------------------------------
def replica_killed(tmp: Path, workflows: int = 6, calls: int = 4) -> list[Outcome]:
    """Two single-replica emulators; one is SIGKILLed while workflows run, then restarted."""
    # one block of two: picked apart, the second pick could take the first port before
    # its emulator binds it
    port_a = free_ports(2)
    port_b = port_a + 1
    urls = [f"http://{HOST}:{port_a}", f"http://{HOST}:{port_b}"]
    emu_a = start_emulator(port_a)
    emu_b = start_emulator(port_b)
    answers: Counter[int] = Counter()
    per_request: list[int] = []
    moved = retried = 0
    lock = threading.Lock()
    try:
        cfg = gateway_config(urls, retries=3, policy="vllm-affinity")
        with gateway(cfg, tmp) as gw:
            homes: dict[str, str] = {}
            kill = threading.Event()

            def run(w: int) -> None:
                nonlocal moved, retried
                for c in range(calls):
                    if c == 1:
                        kill.wait(20)
                    status, headers, _ = chat(gw, ALPHA, f"kill-{w}", max_tokens=300,
                                              content=f"workflow {w} " * (40 + c))
                    with lock:
                        answers[status] += 1
                        per_request.append(1)
                        backend = headers.get("x-saga-backend", "")
                        if homes.get(f"kill-{w}") not in (None, backend):
                            moved += 1
                        homes[f"kill-{w}"] = backend
                        retried += int(headers.get("x-saga-retries", "0"))

            threads = [threading.Thread(target=run, args=(w,)) for w in range(workflows)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            # kill the replica most workflows live on, with calls in flight
            counts = Counter(homes.values())
            victim = int(counts.most_common(1)[0][0]) if counts else 0
            (emu_a if victim == 0 else emu_b).send_signal(signal.SIGKILL)
            kill.set()
            for t in threads:
                t.join(60)
            down = wait_until(lambda: health(gw)["backends_up"] == 1, 10)
            if victim == 0:
                emu_a.wait(5)
                emu_a = start_emulator(port_a)
            else:
                emu_b.wait(5)
                emu_b = start_emulator(port_b)
            rejoined = wait_until(lambda: health(gw)["backends_up"] == 2, 15)
            after, _, _ = chat(gw, ALPHA, "after-rejoin")
            text = admin_metrics(gw)
    finally:
        _stop(emu_a)
        _stop(emu_b)
    total = workflows * calls
    ok = answers == Counter({200: total}) and len(per_request) == total
    return [
        Outcome("faults", f"replica SIGKILLed mid-workflow ({workflows} workflows x {calls} "
                "calls, sticky sessions)", total,
                f"{answers[200]}/{total} answered 200 exactly once; {moved} calls moved to the "
                f"other replica; {retried} retries; down detected: {down}", ok and down,
                {"metrics_retries": metric_value(text, "saga_retries_total")}),
        Outcome("faults", "killed replica restarted on its port", 1,
                f"rejoined (health 2/2): {rejoined}; next call {after}",
                rejoined and after == 200),
    ]


def backend_errors(tmp: Path, calls: int = 20) -> list[Outcome]:
    """A backend that answers 500 (next to a good one), and one that hangs."""
    p_bad = free_ports(3)  # one block: distinct by construction (see replica_killed)
    p_good, p_slow = p_bad + 1, p_bad + 2
    rows: list[Outcome] = []
    with process([sys.executable, str(HERE / "fake_backend.py"), str(p_bad), "500"]) as bad, \
            process([sys.executable, str(HERE / "fake_backend.py"), str(p_good), "echo"]), \
            process([sys.executable, str(HERE / "fake_backend.py"), str(p_slow), "slow"]):
        for port in (p_bad, p_good, p_slow):
            wait_http(f"http://{HOST}:{port}/health", proc=bad if port == p_bad else None)
        bad_url, good_url = f"http://{HOST}:{p_bad}", f"http://{HOST}:{p_good}"
        cfg = gateway_config([bad_url, good_url], kind="openai", policy="vllm-rr",
                             retries=2, retry_backoff=0.01, retry_budget=1.0, served_models=[])
        with gateway(cfg, tmp) as gw:
            statuses = Counter(chat(gw, ALPHA, f"e{i}")[0] for i in range(calls))
        rows.append(Outcome(
            "faults", "backend answers 500 (round robin with a good one, retries 2, budget 1.0)",
            calls,
            f"statuses {dict(statuses)}", statuses == Counter({200: calls})))
        hits_before = json.loads(http("GET", bad_url + "/_seen")[2])["hits"]
        cfg = gateway_config([bad_url], kind="openai", retries=2, retry_backoff=0.0,
                             retry_budget=0.1, served_models=[])
        n = 4 * calls
        with gateway(cfg, tmp) as gw:
            statuses = Counter(chat(gw, ALPHA, f"b{i}")[0] for i in range(n))
            body = json.loads(chat(gw, ALPHA, "last")[2])
        hits = json.loads(http("GET", bad_url + "/_seen")[2])["hits"] - hits_before
        # reserve 10 tokens + 0.1 per call: at most 10 + 0.1 * (n + 1) retries
        limit = (n + 1) + 10 + 0.1 * (n + 1)
        rows.append(Outcome(
            "faults", "only backend answers 500: retries bounded by the budget", n + 1,
            f"statuses {dict(statuses)}; backend hit {hits} times for {n + 1} calls "
            f"(budget allows <= {limit:.0f}); message: {body['error']['message'][:60]!r}",
            set(statuses) == {502} and hits <= limit))
        slow_url = f"http://{HOST}:{p_slow}"
        cfg = gateway_config([slow_url], kind="openai", retries=1, retry_backoff=0.0,
                             request_timeout=0.5, served_models=[])
        with gateway(cfg, tmp) as gw:
            t0 = time.monotonic()
            status, _, body_raw = chat(gw, ALPHA, "slow")
            elapsed = time.monotonic() - t0
        rows.append(Outcome(
            "faults", "backend hangs (request_timeout 0.5 s, retries 1)", 1,
            f"{status} after {elapsed:.1f} s: {json.loads(body_raw)['error']['code']}",
            status == 504 and elapsed < 5))
    return rows


def client_disconnects(tmp: Path) -> list[Outcome]:
    """A client that leaves mid-stream (and one that leaves a plain call) cancels the
    backend call: the emulator aborts it instead of running it to its end."""
    import socket

    rows = []
    with emulator(replicas=1, time_scale=1.0) as urls, \
            gateway(gateway_config(urls), tmp) as gw:
        port = int(gw.rsplit(":", 1)[1])
        for stream in (True, False):
            body = json.dumps({"model": MODEL, "max_tokens": 4000, "stream": stream,
                               "messages": [{"role": "user", "content": "long"}]}).encode()
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\n"
                    f"Authorization: Bearer {ALPHA}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall(head + body)
                if stream:
                    s.recv(4096)  # the headers and the first chunks
                else:
                    time.sleep(0.5)
            state_url = urls[0] + "/saga/state"

            def aborted(url: str = state_url) -> bool:
                state = json.loads(http("GET", url)[2])
                return bool(state["running"] == 0 and state["waiting"] == 0)

            cancelled = wait_until(aborted, 10)
            state = json.loads(http("GET", state_url)[2])
            rows.append(Outcome(
                "faults", f"client disconnects mid-{'stream' if stream else 'call'} "
                "(4000 tokens asked, ~40 s of model time)", 1,
                f"backend call cancelled: {cancelled} (emulator aborted "
                f"{state['aborted_calls']}, generated {state['output_tokens']} tokens)",
                cancelled))
    return rows


def gateway_restart_with_redis(tmp: Path, workflows: int = 5) -> list[Outcome]:
    """SIGKILL a gateway that uses Redis; a new one keeps affinity and the accounts."""
    with redis_server() as redis_url, emulator(replicas=2) as urls:
        cfg = gateway_config(urls, policy="vllm-rr", admin_keys=[ADMIN],
                             store={"kind": "redis", "url": redis_url, "prefix": "rel:"})
        homes: dict[str, str] = {}
        with gateway(cfg, tmp) as gw:
            for w in range(workflows):
                homes[f"r{w}"] = chat(gw, ALPHA, f"r{w}")[1]["x-saga-backend"]
            tokens_before = metric_value(admin_metrics(gw), "saga_tenant_tokens_total",
                                         tenant="alpha")
        # gateway() stops its process; start another on the same store
        with gateway(cfg, tmp) as gw2:
            same = sum(chat(gw2, ALPHA, f"r{w}")[1]["x-saga-backend"] == homes[f"r{w}"]
                       for w in range(workflows))
            tokens_after = metric_value(admin_metrics(gw2), "saga_tenant_tokens_total",
                                        tenant="alpha")
    ok = same == workflows and (tokens_after or 0) > (tokens_before or 0) > 0
    return [Outcome("faults", "gateway process replaced, Redis store kept", workflows,
                    f"{same}/{workflows} workflows kept their replica; alpha's tokens "
                    f"{tokens_before:g} before, {tokens_after:g} after (accumulating)", ok)]


# ---- 2. bad input -----------------------------------------------------------------------------
def _bad_cases() -> list[tuple[str, str, str, bytes, dict[str, str], int]]:
    ok_headers = {"Authorization": f"Bearer {ALPHA}", "Content-Type": "application/json"}
    good = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def body(**change: Any) -> bytes:
        return json.dumps({**good, **change}).encode()

    chat_ = "/v1/chat/completions"
    return [
        ("malformed JSON", "POST", chat_, b'{"model": "x", ', ok_headers, 400),
        ("not UTF-8", "POST", chat_, b"\xff\xfe{}", ok_headers, 400),
        ("JSON array body", "POST", chat_, b"[1, 2]", ok_headers, 400),
        ("empty body", "POST", chat_, b"", ok_headers, 400),
        ("nesting 100000 deep", "POST", chat_, b"[" * 100000 + b"]" * 100000, ok_headers, 400),
        ("messages missing", "POST", chat_, json.dumps({"model": MODEL}).encode(),
         ok_headers, 400),
        ("messages empty", "POST", chat_, body(messages=[]), ok_headers, 400),
        ("message role a number", "POST", chat_, body(messages=[{"role": 3}]), ok_headers, 400),
        ("max_tokens a string", "POST", chat_, body(max_tokens="many"), ok_headers, 400),
        ("max_tokens negative", "POST", chat_, body(max_tokens=-5), ok_headers, 400),
        ("max_tokens 10**30", "POST", chat_, body(max_tokens=10**30), ok_headers, 400),
        ("max_tokens NaN", "POST", chat_, b'{"model":"saga-test","max_tokens":NaN,'
         b'"messages":[{"role":"user","content":"x"}]}', ok_headers, 400),
        ("max_tokens above max_output_tokens", "POST", chat_, body(max_tokens=10**6),
         ok_headers, 400),
        ("n = 3", "POST", chat_, body(n=3), ok_headers, 400),
        ("stream a list", "POST", chat_, body(stream=[1]), ok_headers, 400),
        ("unknown model", "POST", chat_, body(model="gpt-17"), ok_headers, 404),
        ("completions: two prompts", "POST", "/v1/completions",
         json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode(), ok_headers, 400),
        ("body over max_body_bytes", "POST", chat_,
         body(messages=[{"role": "user", "content": "x" * (2 * 1024 * 1024)}]), ok_headers, 413),
        ("x-saga-end: maybe", "POST", chat_, body(), {**ok_headers, "x-saga-end": "maybe"}, 400),
        ("x-saga-workflow 1000 chars", "POST", chat_, body(),
         {**ok_headers, "x-saga-workflow": "w" * 1000}, 400),
        ("no Authorization", "POST", chat_, body(), {"Content-Type": "application/json"}, 401),
        ("Authorization: Basic", "POST", chat_, body(),
         {**ok_headers, "Authorization": "Basic abc"}, 401),
        ("unknown key", "POST", chat_, body(), {**ok_headers, "Authorization": "Bearer nope"},
         401),
        ("GET on a POST route", "GET", chat_, b"", ok_headers, 405),
        ("unknown path", "POST", "/v1/embeddings", body(), ok_headers, 404),
    ]


def bad_inputs(tmp: Path) -> list[Outcome]:
    rows = []
    with emulator(replicas=1) as urls, gateway(
            gateway_config(urls, max_body_bytes=1024 * 1024, max_output_tokens=4096),
            tmp) as gw:
        for name, method, path, body, headers, expected in _bad_cases():
            status, _, raw = http(method, gw + path, body or None, headers)
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"(not an OpenAI error body: {raw[:60]!r})"
            rows.append(Outcome("bad input", name, 1, f"{status}: {message[:90]}",
                                status == expected and "error" in json.loads(raw or b"{}")))
    return rows


def bad_traces(tmp: Path) -> list[Outcome]:
    """Trace files with a bad line fail naming the line and field; nothing half-loaded."""
    from saga.core.trace import TraceError, read_trace, workflow_to_dict
    from saga.core.workflow import Call, Prompt, Workflow
    from saga.workloads.readers import read_mooncake

    good = workflow_to_dict(Workflow("w1", "t", "a", 0.0,
                                     (Call("c0", Prompt(100, (), ((0, 1),)), 5),)))
    cases: list[tuple[str, str, Any, str, str]] = []
    broken_arrival = {**good, "id": "w2", "arrival": "soon"}
    cases.append(("saga trace: arrival a string", "saga.jsonl",
                  [json.dumps(good), json.dumps(broken_arrival)], ":2", "arrival"))
    cases.append(("saga trace: truncated line", "saga2.jsonl",
                  [json.dumps(good), json.dumps(good)[:-7]], ":2", "JSON"))
    calls_bad = {**good, "id": "w3", "calls": [{"id": "c0", "prompt": {"tokens": -1},
                                                 "output_tokens": 5}]}
    cases.append(("saga trace: negative prompt tokens", "saga3.jsonl",
                  [json.dumps(good), json.dumps(calls_bad)], ":2", "tokens"))
    moon = {"timestamp": 0, "input_length": 1024, "output_length": 5, "hash_ids": [1, 2]}
    cases.append(("mooncake: hash_ids with a string", "moon.jsonl",
                  [json.dumps(moon), json.dumps({**moon, "hash_ids": [1, "x"]})], ":2",
                  "hash_ids"))
    rows = []
    for name, file, lines, line_tag, field_name in cases:
        path = tmp / file
        path.write_text("\n".join(lines) + "\n")
        loaded: list[Any] = []
        try:
            reader = read_mooncake if file.startswith("moon") else read_trace
            loaded = list(reader(path))
            message = "loaded without error"
            ok = False
        except TraceError as error:
            message = str(error)
            ok = line_tag in message and field_name in message and not loaded
        rows.append(Outcome("bad input", name, 1, message[-110:], ok))
    return rows


def fuzz(tmp: Path, examples: int = 50) -> Outcome:
    """schemathesis against /openapi.json, positive and negative cases, every operation."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    statuses: Counter[int] = Counter()
    errors: list[str] = []
    cases = 0
    with emulator(replicas=2, time_scale=50.0) as urls, gateway(
            gateway_config(urls, max_output_tokens=64, default_max_tokens=16,
                           max_body_bytes=256 * 1024), tmp) as gw:
        schema = schemathesis.openapi.from_url(gw + "/openapi.json")
        auth = {"Authorization": f"Bearer {ALPHA}"}
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(max_examples=examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    nonlocal cases
                    cases += 1
                    headers = {**(case.headers or {}), **auth}
                    response = case.call(base_url=gw, headers=headers, timeout=30)
                    statuses[response.status_code] += 1
                    if response.status_code >= 500 and len(errors) < 5:
                        errors.append(f"{case.operation.label} -> {response.status_code}: "
                                      f"{response.text[:200]}")

                # GET /v1/models has no input to break in negative mode
                with contextlib.suppress(Unsatisfiable):
                    run()
    server_errors = sum(n for s, n in statuses.items() if s >= 500)
    return Outcome("bad input", f"schemathesis {schemathesis.__version__} fuzz of "
                   "/openapi.json (positive + negative)", cases,
                   f"{server_errors} server errors; statuses "
                   f"{dict(sorted(statuses.items()))}", server_errors == 0,
                   {"errors": errors})


# ---- 3. overload -------------------------------------------------------------------------------
def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def flood(tmp: Path, total: int = 3000, clients: int = 200) -> Outcome:
    """``clients`` concurrent connections send ``total`` calls at a gateway whose bounds
    are small; every call is answered (200 or 429 + Retry-After), RSS stays bounded."""
    import aiohttp

    with emulator(replicas=2, time_scale=50.0) as urls:
        port = free_ports(1)
        path = tmp / f"flood-{port}.json"
        cfg = gateway_config(urls, max_concurrency=4, max_queue=16, max_pending=64,
                             host=HOST, port=port)
        path.write_text(json.dumps(cfg))
        with process([sys.executable, "-m", "saga.gateway", "--config", str(path)]) as proc:
            url = f"http://{HOST}:{port}"
            wait_http(url + "/health", proc=proc)
            chat(url, ALPHA, "warm")
            rss0 = _rss_kb(proc.pid)
            peak = rss0
            statuses: Counter[int] = Counter()
            retry_after = 0

            async def main() -> float:
                nonlocal peak, retry_after
                queue: asyncio.Queue[int] = asyncio.Queue()
                for i in range(total):
                    queue.put_nowait(i)
                timeout = aiohttp.ClientTimeout(total=60)
                async with aiohttp.ClientSession(timeout=timeout) as session:

                    async def worker() -> None:
                        nonlocal retry_after
                        while not queue.empty():
                            i = queue.get_nowait()
                            body = {"model": MODEL, "max_tokens": 8, "messages": [
                                {"role": "user", "content": f"flood {i} " + "x" * 400}]}
                            async with session.post(
                                url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {ALPHA}"},
                            ) as response:
                                await response.read()
                                statuses[response.status] += 1
                                retry_after += "Retry-After" in response.headers

                    async def sample() -> None:
                        nonlocal peak
                        while True:
                            peak = max(peak, _rss_kb(proc.pid))
                            await asyncio.sleep(0.05)

                    sampler = asyncio.create_task(sample())
                    t0 = time.monotonic()
                    await asyncio.gather(*(worker() for _ in range(clients)))
                    elapsed = time.monotonic() - t0
                    sampler.cancel()
                    return elapsed

            elapsed = asyncio.run(main())
            rss1 = _rss_kb(proc.pid)
            text = admin_metrics(url)
    answered = sum(statuses.values())
    growth_mb = (peak - rss0) / 1024
    ok = (answered == total and set(statuses) <= {200, 429}
          and retry_after == statuses[429] and growth_mb < 100)
    return Outcome(
        "overload", f"flood: {total} calls from {clients} concurrent clients "
        "(max_concurrency 4 x 2, max_queue 16, max_pending 64)", total,
        f"{answered} answered in {elapsed:.1f} s: {statuses[200]} x 200, {statuses[429]} x 429 "
        f"(all with Retry-After: {retry_after == statuses[429]}); RSS {rss0 / 1024:.0f} MB -> "
        f"peak {peak / 1024:.0f} MB -> {rss1 / 1024:.0f} MB after (+{growth_mb:.1f} MB)", ok,
        {"shed": metric_value(text, "saga_shed_total", bound="pending"),
         "rss_start_mb": rss0 / 1024, "rss_peak_mb": peak / 1024})


# ---- 4. tenant isolation ---------------------------------------------------------------------
def tenant_isolation(tmp: Path) -> list[Outcome]:
    rows = []
    p_echo = free_ports(1)
    with process([sys.executable, str(HERE / "fake_backend.py"), str(p_echo), "echo"]) as proc:
        echo = f"http://{HOST}:{p_echo}"
        wait_http(echo + "/health", proc=proc)
        cfg = gateway_config([echo], kind="emulator", served_models=[], admin_keys=[ADMIN],
                             tenants={"alpha": {"keys": [ALPHA], "weight": 1.0},
                                      "beta": {"keys": [BETA], "weight": 1.0}})
        port = free_ports(1)
        path = tmp / f"iso-{port}.json"
        path.write_text(json.dumps({**cfg, "host": HOST, "port": port}))
        with process([sys.executable, "-m", "saga.gateway", "--config", str(path)]) as gw_proc:
            gw = f"http://{HOST}:{port}"
            wait_http(gw + "/health", proc=gw_proc)
            _, h_alpha, _ = chat(gw, ALPHA, "shared")
            ids = {chat(gw, BETA, w)[1].get("x-saga-workflow", "")
                   for w in ("shared", "alpha/shared", "../alpha/shared")}
            rows.append(Outcome(
                "tenants", "beta names alpha's workflow (same id, 'alpha/' prefix, '../')", 3,
                f"alpha's id {h_alpha.get('x-saga-workflow')}; beta's calls land in "
                f"{sorted(ids)}", all(i.startswith("beta/") for i in ids)
                and h_alpha.get("x-saga-workflow") == "alpha/shared"))
            body = json.dumps({"model": "m", "priority": -1000, "messages": [
                {"role": "user", "content": "me first"}]}).encode()
            http("POST", gw + "/v1/chat/completions", body, {
                "Authorization": f"Bearer {BETA}", "Content-Type": "application/json",
                "x-saga-priority": "-1000", "x-saga-weight": "100"})
            seen = json.loads(http("GET", echo + "/_seen")[2])
            got = {k.lower(): v for k, v in seen["headers"].items()}
            raised = "priority" in seen["body"] or got.get("x-saga-priority") == "-1000" \
                or "x-saga-weight" in got
            rows.append(Outcome(
                "tenants", "beta tries to raise its priority/weight (body priority, "
                "x-saga-priority, x-saga-weight)", 3,
                f"backend saw body priority: {'priority' in seen['body']}, x-saga-priority: "
                f"{got.get('x-saga-priority')}, x-saga-weight: {got.get('x-saga-weight')}",
                not raised))
            st_tenant = http("GET", gw + "/metrics",
                             headers={"Authorization": f"Bearer {BETA}"})[0]
            st_none = http("GET", gw + "/metrics")[0]
            st_admin = http("GET", gw + "/metrics",
                            headers={"Authorization": f"Bearer {ADMIN}"})[0]
            rows.append(Outcome(
                "tenants", "a tenant reads the gateway's state (/metrics: all tenants)", 3,
                f"tenant key {st_tenant}, no key {st_none}, admin key {st_admin}",
                (st_tenant, st_none, st_admin) == (403, 401, 200)))
            # try keys that share a prefix with a real one, then look for keys in the log
            near = [ALPHA[:-1], ALPHA + "x", ALPHA.upper(), " " + ALPHA]
            statuses = [chat(gw, k)[0] for k in near]
            rows.append(Outcome(
                "tenants", "near-miss keys (prefix, suffix, case)", len(near),
                f"statuses {statuses} (KeyRing: SHA-256 + hmac.compare_digest over all keys)",
                statuses[:3] == [401, 401, 401]))
        log = gw_proc.stdout.read().decode() if gw_proc.stdout else ""
    leaked = [k for k in (ALPHA, BETA, ADMIN, ALPHA[:-1]) if k in log]
    rows.append(Outcome("tenants", "API keys in the gateway's output (stdout+stderr)",
                        len(log.splitlines()), f"keys found: {len(leaked)}", not leaked))
    return rows


# ---- 5. real clients, tenants' learning, closed pages, slow leaks ---------------------------
SESSIONS: dict[str, Any] = json.loads(
    (HERE.parent / "gateway" / "fixtures" / "agent_sessions.json").read_text())


def _session_calls(name: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """A recorded agent session (tests/gateway/fixtures) as its calls: headers, body."""
    s = SESSIONS[name]
    messages: list[dict[str, Any]] = [{"role": "system", "content": s["system"]},
                                      {"role": "user", "content": s["user"]}]
    out = [(dict(s["headers"]), {**s["body"], "messages": list(messages)})]
    for k, step in enumerate(s["steps"]):
        calls = [{"id": f"c{k}_{j}", "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for j, c in enumerate(step["tool_calls"])]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for call, result in zip(calls, step["results"], strict=True):
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        out.append((dict(s["headers"]), {**s["body"], "messages": list(messages)}))
    return out


def _graph(url: str) -> dict[str, Any]:
    _, _, body = http("GET", url + "/saga/graph", headers={"Authorization": f"Bearer {ADMIN}"})
    agents: dict[str, Any] = json.loads(body)["agents"]
    return agents


def agents_without_headers(tmp: Path) -> list[Outcome]:
    """Recorded request shapes of real coding agents, no SAGA header: one workflow per
    session, the agent named, tool boundaries learned."""
    rows = []
    with emulator(replicas=2) as urls, gateway(
            gateway_config(urls, policy="saga", served_models=[]), tmp) as gw:
        for name in (n for n in SESSIONS if not n.startswith("_")):
            calls = _session_calls(name)
            ids, statuses = set(), []
            for headers, body in calls:
                body = {**body, "model": MODEL, "max_tokens": 4, "stream": False}
                status, got, _ = http("POST", gw + "/v1/chat/completions",
                                      json.dumps(body).encode(), {
                                          **headers, "Authorization": f"Bearer {ALPHA}",
                                          "Content-Type": "application/json"})
                statuses.append(status)
                ids.add(got.get("x-saga-workflow", ""))
            learned = [a for a in _graph(gw) if a.startswith("alpha/")]
            tools = {t for a in learned for t in _graph(gw)[a]["tools"]}
            expected_tools = {"+".join(c["name"] for c in st["tool_calls"])
                              for st in SESSIONS[name]["steps"]}
            one = len(ids) == 1 and not next(iter(ids)).startswith("alpha/auto:")
            rows.append(Outcome(
                "clients", f"{name} session, no SAGA header ({SESSIONS[name]['source'][:60]}...)",
                len(calls), f"statuses {sorted(set(statuses))}; workflow ids {sorted(ids)}; "
                f"graphs {sorted(learned)}", one and set(statuses) == {200}
                and expected_tools <= tools))
    return rows


def tenant_graphs(tmp: Path, flood: int = 20) -> Outcome:
    """Beta floods calls under alpha's agent name; alpha's learned graph does not move."""
    with emulator(replicas=2) as urls, gateway(
            gateway_config(urls, policy="saga", graph_sync_interval=0), tmp) as gw:
        def run(key: str, prefix: str, n: int, tools: list[str]) -> None:
            for w in range(n):
                for k, tool in enumerate([None, *tools]):
                    extra = {"x-saga-agent": "coder", "x-saga-end": str(k == len(tools))}
                    if tool:
                        extra["x-saga-tool"] = tool
                    chat(gw, key, f"{prefix}{w}", content=f"{prefix}{w} " * (20 + 10 * k),
                         extra=extra)

        run(ALPHA, "a", 3, ["grep", "read"])
        before = json.dumps(_graph(gw).get("alpha/coder"), sort_keys=True)
        run(BETA, "b", flood, ["bash"] * 5)
        graphs = _graph(gw)
        after = json.dumps(graphs.get("alpha/coder"), sort_keys=True)
    return Outcome("tenants", "beta floods calls under alpha's agent name (coder)",
                   flood * 6, f"alpha/coder graph unchanged: {before == after}; graphs "
                   f"{sorted(graphs)}", before == after and "beta/coder" in graphs)


def closed_by_default(tmp: Path) -> Outcome:
    """No admin key configured: /metrics and /saga/graph are closed to all."""
    with emulator(replicas=1) as urls, gateway(
            {**gateway_config(urls), "admin_keys": [], "public_metrics": False}, tmp) as gw:
        got = [http("GET", gw + path, headers=h)[0] for path in ("/metrics", "/saga/graph")
               for h in ({}, {"Authorization": f"Bearer {ALPHA}"},
                         {"Authorization": f"Bearer {ADMIN}"})]
    return Outcome("tenants", "/metrics, /saga/graph with no admin key configured (no key, "
                   "tenant key, a guessed key)", len(got), f"statuses {got}",
                   got == [401, 403, 401] * 2)


def redis_faults(tmp: Path, calls: int = 20) -> list[Outcome]:
    """Redis hung (SIGSTOP), then stopped and restarted: calls go on; the store is used
    again once back."""
    rows = []
    port = free_ports(1)
    with emulator(replicas=2) as urls:
        cfg = gateway_config(urls, policy="saga", store={
            "kind": "redis", "url": f"redis://{HOST}:{port}/0", "socket_timeout": 0.5,
            "connect_timeout": 0.5})
        with _redis_at(port) as proc, gateway(cfg, tmp) as gw:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                hung = [chat(gw, ALPHA, f"h{i}")[0] for i in range(calls)]
                took = time.monotonic() - t0
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            text = admin_metrics(gw)
            errors = metric_value(text, "saga_store_errors_total", op="session") or 0
            skipped = metric_value(text, "saga_store_skipped_total", op="session") or 0
            rows.append(Outcome(
                "leaks", "Redis hung (SIGSTOP) under calls (socket_timeout 0.5 s)", calls,
                f"statuses {sorted(Counter(hung).items())} in {took:.1f} s; store sessions "
                f"read: {errors:g} failed (timed out), {skipped:g} skipped while it was down",
                set(hung) == {200} and errors + skipped >= calls and errors < calls))
            _stop(proc)
            down = [chat(gw, ALPHA, f"d{i}")[0] for i in range(calls)]
            with _redis_at(port):
                time.sleep(1.1)  # past the second in which a failed store is left alone
                back = [chat(gw, ALPHA, f"u{i}")[0] for i in range(calls)]
                keys = _redis_dbsize(port)
            rows.append(Outcome(
                "leaks", "Redis stopped, then restarted empty on the same port", 2 * calls,
                f"while down {sorted(Counter(down).items())}; after restart "
                f"{sorted(Counter(back).items())}, {keys} Redis keys written again",
                set(down) == {200} and set(back) == {200} and keys > 0))
    return rows


def agent_names_bound(tmp: Path, names: int = 40, limit: int = 8) -> Outcome:
    """A client sends a new agent name on every workflow: the tenant keeps ``limit``
    names, the rest are learned under its catch-all agent and counted."""
    with emulator(replicas=1) as urls, gateway(gateway_config(
            urls, policy="saga", graph_sync_interval=0, max_agents_per_tenant=limit),
            tmp) as gw:
        statuses = [chat(gw, ALPHA, f"n{i}", extra={"x-saga-agent": f"agent-{i}",
                                                     "x-saga-end": "1"})[0]
                    for i in range(names)]
        text = admin_metrics(gw)
        graphs = [g for g in _graph(gw) if g.startswith("alpha/")]
    folded = metric_value(text, "saga_agent_names_folded_total", tenant="alpha") or 0
    kept = metric_value(text, "saga_agent_names", tenant="alpha") or 0
    return Outcome(
        "leaks", f"a new agent name per workflow (max_agents_per_tenant {limit})", names,
        f"statuses {sorted(Counter(statuses).items())}; alpha's graphs {len(graphs)} "
        f"({limit} names + '(other)'); names kept {kept:g}, calls folded {folded:g}",
        set(statuses) == {200} and len(graphs) == limit + 1 and kept == limit
        and folded == names - limit)


def store_bound(tmp: Path, workflows: int = 60, limit: int = 20) -> Outcome:
    """More workflows than store.max_sessions: the oldest sessions go, counted."""
    port = free_ports(1)
    with emulator(replicas=1) as urls, _redis_at(port):
        cfg = gateway_config(urls, store={"kind": "redis", "url": f"redis://{HOST}:{port}/0",
                                          "max_sessions": limit})
        with gateway(cfg, tmp) as gw:
            statuses = [chat(gw, ALPHA, f"s{i}")[0] for i in range(workflows)]
            text = admin_metrics(gw)
        sessions = metric_value(text, "saga_store_sessions")
        evicted = metric_value(text, "saga_store_sessions_evicted_total")
        keys = _redis_dbsize(port)
    return Outcome("leaks", f"{workflows} workflows, store.max_sessions {limit} (Redis)",
                   workflows, f"statuses {sorted(set(statuses))}; {sessions:g} sessions, "
                   f"{evicted:g} evicted, {keys} Redis keys",
                   set(statuses) == {200} and sessions == limit
                   and evicted == workflows - limit and keys <= 2 * limit + 4)


def slot_files(tmp: Path, workflows: int = 30, budget_files: int = 5) -> Outcome:
    """llama.cpp slot files: swept at start, deleted on drop and at the workflow's end,
    kept within the disk budget."""
    slot_dir = tmp / "slots"
    slot_dir.mkdir(exist_ok=True)
    for i in range(3):  # left by an earlier run
        (slot_dir / f"saga-stale{i}.bin").write_bytes(b"x" * 1000)
    port = free_ports(1)
    with process([sys.executable, str(HERE / "fake_backend.py"), str(port), "llamacpp",
                  str(slot_dir)]) as proc:
        url = f"http://{HOST}:{port}"
        wait_http(url + "/health", proc=proc)
        cfg = gateway_config([url], kind="llamacpp", policy="test-offload",
                             plugins=["saga_test_policies"], served_models=[])
        cfg["backends"][0].update({"slots": 2, "slot_save_path": str(slot_dir),
                                   "slot_save_budget": 1000 * budget_files})
        peak = 0
        with gateway(cfg, tmp) as gw:
            swept = sorted(p.name for p in slot_dir.iterdir())
            for w in range(workflows):
                agent = "dropper" if w % 3 == 0 else "coder"
                for k in range(2):
                    chat(gw, ALPHA, f"l{w}", extra={"x-saga-agent": agent,
                                                     "x-saga-end": str(k == 1 and w % 2 == 0)})
                peak = max(peak, len(list(slot_dir.iterdir())))
            time.sleep(0.5)  # the last retention actions run after their answers
            text = admin_metrics(gw)
        left = len(list(slot_dir.iterdir()))
    deleted = {r: metric_value(text, "saga_slot_files_deleted_total", reason=r)
               for r in ("sweep", "drop", "end", "budget")}
    return Outcome(
        "leaks", f"llama.cpp slot saves: {workflows} workflows offloaded, a third then "
        f"dropped, half ended; budget {budget_files} files; 3 stale files at start",
        workflows * 2,
        f"stale files after start {len(swept)}; at most {peak} files, {left} at the end; "
        f"deleted {', '.join(f'{k} {v:g}' for k, v in deleted.items() if v is not None)}",
        swept == [] and peak <= budget_files and left <= budget_files
        and all((deleted[r] or 0) > 0 for r in ("sweep", "drop", "end", "budget")))


def retry_elsewhere(tmp: Path, calls: int = 10) -> Outcome:
    """A backend answers 500 to everything; the policy would pick it again (ties go to
    replica 0): retries go to the other backend."""
    p500 = free_ports(1)
    with process([sys.executable, str(HERE / "fake_backend.py"), str(p500), "500"]) as bad:
        # bound before the emulator picks its port, which could otherwise be this one
        wait_http(f"http://{HOST}:{p500}/health", proc=bad)
        with emulator(replicas=1) as urls:
            cfg = gateway_config([f"http://{HOST}:{p500}", *urls], kind="emulator",
                                 policy="test-first-up", plugins=["saga_test_policies"],
                                 retries=1, retry_backoff=0.0, retry_budget=1.0)
            with gateway(cfg, tmp) as gw:
                got = [chat(gw, ALPHA, f"x{i}")[:2] for i in range(calls)]
            hits = json.loads(http("GET", f"http://{HOST}:{p500}/_seen")[2])["hits"]
    statuses = Counter(s for s, _ in got)
    moved = sum(h.get("x-saga-backend") == "1" and h.get("x-saga-retries") == "1"
                for _, h in got)
    return Outcome("faults", "a backend answers 500 to every call; the policy prefers it",
                   calls, f"statuses {sorted(statuses.items())}; {moved} answered by the other "
                   f"backend after 1 retry; the failing backend saw {hits} calls",
                   statuses == Counter({200: calls}) and moved == calls and hits == calls)


def soak_rows(report: dict[str, Any]) -> list[Outcome]:
    """Rows from a ``scripts/soak.py --json`` report."""
    s, e = report["start"], report["end"]
    what = (f"soak: {report['minutes']:g} min at {report['rate']:g} calls/s "
            f"({report['achieved_rate']:g} achieved), {report['replicas']} emulators, Redis; "
            f"{report['disconnect']:.0%} client disconnects, " + "; ".join(
                ev.strip() for ev in report["events"]))
    if report.get("note"):
        what += f" ({report['note']})"
    bounded_keys = e["redis_keys"] is not None and e["redis_keys"] <= 2 * 2000 + 100
    samples = report.get("samples", [])
    rss = [x["rss_mb"] for x in samples]
    files = [x["open_files"] for x in samples]
    # open files follow the calls in flight: flat means no higher at the end than in the
    # first half of the run
    first_half = files[:max(1, len(files) // 2)]
    files_bound = max(first_half) if files else s["open_files"] + 10
    return [
        Outcome("soak", what, report["sent"],
                f"statuses {report['statuses']}; lost {report['lost']}; served by backends "
                f"beyond the answers (less disconnects) {report['answered_twice_bound']}",
                report["lost"] == 0 and report["answered_twice_bound"] == 0),
        Outcome("soak", "gateway memory and files, start to end", report["sent"],
                f"RSS {s['rss_mb']} -> {e['rss_mb']} MB ({report['rss_growth_pct']:+g} %; "
                f"samples {min(rss, default=0):g}-{max(rss, default=0):g}); open files "
                f"{s['open_files']} -> {e['open_files']} (samples {min(files, default=0)}-"
                f"{max(files, default=0)}, the connections of calls in flight)",
                report["rss_growth_pct"] < 10 and e["open_files"] <= files_bound),
        Outcome("soak", "Redis keys, store sessions, slot files, start to end", report["sent"],
                f"Redis keys {s['redis_keys']} -> {e['redis_keys']}; sessions "
                f"{s['store_sessions']} -> {e['store_sessions']} (max 2000; "
                f"{e['sessions_evicted']:g} evicted); slot files {s['slot_files']} -> "
                f"{e['slot_files']} (emulators save none)", bounded_keys),
        *_soak_memory_rows(report),
    ]


def _soak_memory_rows(report: dict[str, Any]) -> list[Outcome]:
    """With ``scripts/soak.py --heap`` or ``--trace-malloc``: where the gateway's memory
    went, start to end. Live memory (pymalloc's live blocks plus glibc's bytes in use) is
    what a leak grows; free bytes the allocators keep and their arenas are not a leak."""
    traced = report.get("trace_malloc")
    if not traced or not traced["start"].get("pymalloc"):
        return []
    s, e = traced["start"], traced["end"]

    def mb(n: float) -> str:
        return f"{n / 2**20:.1f}"

    live = [x["pymalloc"]["live_bytes"] + x["heap"]["in_use_bytes"] for x in (s, e)]
    growth = 100 * (live[1] / live[0] - 1)
    trimmed = e.get("rss_after_trim_kb")
    text = (f"live (pymalloc blocks + glibc in use) {mb(live[0])} -> {mb(live[1])} MB "
            f"({growth:+.1f} %); pymalloc arenas {mb(s['pymalloc']['total_bytes'])} -> "
            f"{mb(e['pymalloc']['total_bytes'])} MB; glibc heap {mb(s['heap']['arena_bytes'])}"
            f" -> {mb(e['heap']['arena_bytes'])} MB, of it free {mb(s['heap']['free_bytes'])} "
            f"-> {mb(e['heap']['free_bytes'])} MB; gc objects {s['gc_objects']} -> "
            f"{e['gc_objects']}; RSS at the end {e['rss_kb'] / 1024:.1f} MB"
            + (f", {trimmed / 1024:.1f} MB after malloc_trim" if trimmed else ""))
    return [Outcome("soak", "gateway memory by allocator, start to end (--heap)",
                    report["sent"], text, growth < 10)]


@contextmanager
def _redis_at(port: int) -> Iterator[subprocess.Popen[bytes]]:
    import shutil
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while _redis_dbsize(port) < 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        _stop(proc)
        del socket


def _redis_dbsize(port: int) -> int:
    """Keys in the Redis on ``port``, or -1 if it does not answer."""
    import socket

    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.sendall(b"DBSIZE\r\n")
            return int(s.recv(64).decode().strip().lstrip(":"))
    except (OSError, ValueError):
        return -1
