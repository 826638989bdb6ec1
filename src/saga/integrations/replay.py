"""Replay LMCache agent sessions (real text) through the gateway in front of real engines.

The LMCache agent traces (``lmcache_agent/*.jsonl.gz``: ``input``, ``output``,
``session_id``, ``timestamp`` per call) hold each call's whole prompt as text. The
workload reader (:mod:`saga.workloads.readers.lmcache`) keeps only token counts and block
ids; a live replay needs the text itself, so this module reads the files again:

* :func:`load_sessions`: the first ``sessions`` sessions (by first timestamp) with calls in
  timestamp order, at most ``calls`` each, empty inputs skipped, each input cut to its first
  ``max_prompt_chars`` characters (a session's prompts extend one another, so cutting the
  tail keeps their shared prefixes);
* :func:`plan`: session *k* arrives at ``k * arrival_interval`` seconds; the gap before a
  later call is the trace's timestamp difference divided by ``time_compress``, at most
  ``max_gap`` (taken after the previous call's answer, as the simulator does); each call
  asks for ``ceil(len(output) / 4)`` tokens, at most ``max_tokens`` (and ``ignore_eos``, so
  it gets exactly that many);
* :func:`replay`: one run through a gateway, a client per session, ``x-saga-workflow``,
  ``x-saga-tool`` and ``x-saga-end`` set; returns each workflow's task completion time
  (TCT: its arrival to its last answer); a refused or failed call ends its session, which
  counts as failed (``failed``), never as a skipped call. A ``salt`` line starts every
  prompt, so that runs one after another on the same engines find nothing of each other
  in the prefix cache;
* :func:`sim_workflows`: the same plan as the simulator's workflows, prompts tokenized with
  the tiny model's own tokenizer and chat template, cut into ``block_tokens`` blocks named
  by their chain (as :mod:`saga.workloads.readers.lmcache` does), for
  :func:`simulate` on a cluster preset (``cpu-tiny``: the calibrated vLLM-CPU replicas),
  with :func:`gateway_estimates` the prompt lengths the gateway gives the policy;
* :class:`GatewayThread`: a gateway in this process, on its own event loop and thread.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from saga.core.workflow import Call, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.engine.costmodel import Efficiency
from saga.engine.kvcache import Run
from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.sched.estimated import with_prompt_estimates
from saga.sched.gateway_view import with_gateway_views
from saga.sched.registry import build_policy
from saga.sched.stock import on_stock_vllm
from saga.sim.simulator import SimResult, Simulation
from saga.wire.prefix import chat_text, estimate_tokens, text_runs
from saga.workloads._blocks import runs_from_ids

__all__ = [
    "CallRecord",
    "GatewayThread",
    "PolicyRun",
    "ReplayCall",
    "ReplayWorkflow",
    "TraceCall",
    "TraceSession",
    "chat_prompt",
    "compare",
    "gateway_estimates",
    "gateway_runs",
    "kv_cluster",
    "load_sessions",
    "plan",
    "replay",
    "sim_workflows",
    "simulate",
    "simulate_deployed",
]


@dataclass(frozen=True, slots=True)
class TraceCall:
    """One call of a trace: its prompt text, its output's length, its timestamp (s)."""

    text: str
    output_chars: int
    t: float


@dataclass(frozen=True, slots=True)
class TraceSession:
    id: str
    calls: tuple[TraceCall, ...]


def load_sessions(
    path: str | Path, *, sessions: int, calls: int, max_prompt_chars: int
) -> list[TraceSession]:
    """The first ``sessions`` sessions of an LMCache agent trace (see the module doc)."""
    by_session: dict[str, list[TraceCall]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            text = str(obj.get("input") or "")
            if not text.strip():
                continue
            call = TraceCall(text[:max_prompt_chars], len(str(obj.get("output") or "")),
                             float(obj.get("timestamp") or 0.0) / 1e6)
            by_session.setdefault(str(obj["session_id"]), []).append(call)
    ordered = sorted(
        ((sid, sorted(cs, key=lambda c: c.t)) for sid, cs in by_session.items()),
        key=lambda item: (item[1][0].t, item[0]),
    )
    return [TraceSession(sid, tuple(cs[:calls])) for sid, cs in ordered[:sessions]]


@dataclass(frozen=True, slots=True)
class ReplayCall:
    text: str
    max_tokens: int
    gap: float  # seconds after the previous call's answer (0 for the first)


@dataclass(frozen=True, slots=True)
class ReplayWorkflow:
    id: str
    arrival: float
    calls: tuple[ReplayCall, ...]


def plan(
    sessions: Sequence[TraceSession], *, max_tokens: int, time_compress: float,
    max_gap: float, arrival_interval: float,
) -> list[ReplayWorkflow]:
    """Arrivals, gaps and output lengths of a replay (see the module doc)."""
    out = []
    for k, s in enumerate(sessions):
        calls = []
        for i, c in enumerate(s.calls):
            gap = min(max_gap, max(0.0, c.t - s.calls[i - 1].t) / time_compress) if i else 0.0
            tokens = min(max_tokens, max(1, math.ceil(c.output_chars / 4)))
            calls.append(ReplayCall(c.text, tokens, gap))
        out.append(ReplayWorkflow(f"s{k:03d}", k * arrival_interval, tuple(calls)))
    return out


def chat_prompt(text: str) -> str:
    """The tiny model's chat template for one user message (docs/engines.md)."""
    return f"<|user|>\n{text}<|end|>\n<|assistant|>\n"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as the client saw it: when it was sent (seconds after the replay's start),
    how long its answer took, the replica that served it (the gateway's
    ``x-saga-backend``, -1 if none said) and its prompt and cached prompt tokens from the
    answer's ``usage`` (-1 when the engine does not report them: vLLM reports cached
    tokens with ``--enable-prompt-tokens-details``)."""

    workflow: str
    index: int
    sent: float
    latency: float
    backend: int
    status: int
    prompt_tokens: int
    cached_tokens: int


@dataclass
class ReplayResult:
    tct: dict[str, float]  # workflow -> seconds (finished workflows)
    calls: int
    errors: int
    backends: dict[str, int]  # workflow -> the replica its calls went to last
    #: Workflows a call of which was refused or failed (not 200): the session stops
    #: there and is a failed session, never a skipped call.
    failed: set[str] = field(default_factory=set)
    #: Seconds each workflow held at the gateway's door waited before admission (the
    #: gateway's ``x-saga-admission: deferred S s: ...`` header), for those deferred.
    deferred: dict[str, float] = field(default_factory=dict)
    #: Every call, in the order the answers came.
    call_log: list[CallRecord] = field(default_factory=list)
    #: Per call whose answer carried the engine's own ``timings`` (llama.cpp's server):
    #: (workflow, index, prefill seconds, decode seconds) as the engine timed them.
    engine_timings: list[tuple[str, int, float, float]] = field(default_factory=list)
    #: When the client's own event loop ran late: (seconds after the replay's start,
    #: seconds late, CPU seconds this process used meanwhile) of each tick of :data:`TICK`
    #: that woke more than :data:`STALL` late. A stalled client sends late and times its
    #: answers late, so the run's figures then measure the client's host, not the policy;
    #: the CPU says which: about the stall's length when a thread of this process (the
    #: gateway's, in the bench) held the interpreter, near 0 when the host did not run it
    #: (docs/engines.md, "Client stalls").
    stalls: list[tuple[float, float, float]] = field(default_factory=list)
    #: time.monotonic() at the replay's start (the zero of ``sent`` and ``stalls``)
    started: float = 0.0

    @property
    def mean_tct(self) -> float:
        return sum(self.tct.values()) / len(self.tct) if self.tct else math.nan


def _usage(payload: bytes) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens) of an answer's ``usage``; -1 for unknown."""
    try:
        usage = json.loads(payload).get("usage") or {}
    except (ValueError, AttributeError):
        return -1, -1
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return int(usage.get("prompt_tokens", -1)), -1 if cached is None else int(cached)


def _engine_timings(payload: bytes) -> tuple[float, float] | None:
    """(prefill, decode) seconds of an answer's ``timings`` (llama.cpp's ``prompt_ms`` and
    ``predicted_ms``), None when it has none."""
    try:
        timings = json.loads(payload).get("timings")
        return float(timings["prompt_ms"]) / 1e3, float(timings["predicted_ms"]) / 1e3
    except (ValueError, AttributeError, TypeError, KeyError):
        return None


#: The client's heartbeat: how often it checks its own event loop, and how late a tick
#: must wake to count as a stall (ReplayResult.stalls).
TICK, STALL = 0.05, 0.25


async def _watch(start: float, stalls: list[tuple[float, float, float]]) -> None:
    """Until cancelled, record each tick that wakes more than STALL late."""
    while True:
        due, cpu = time.monotonic() + TICK, time.process_time()
        await asyncio.sleep(TICK)
        late = time.monotonic() - due
        if late > STALL:
            stalls.append((round(due - start, 3), round(late, 3),
                           round(time.process_time() - cpu, 3)))


async def replay(
    url: str, workflows: Sequence[ReplayWorkflow], *, salt: str = "",
    model: str = "tiny-llama", agent: str = "agent", timeout: float = 600.0,
) -> ReplayResult:
    """Run ``workflows`` through the gateway at ``url``; return their TCTs."""
    start = time.monotonic() + 0.2
    result = ReplayResult({}, 0, 0, {}, started=start)
    limit = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limit) as session:

        async def run(wf: ReplayWorkflow) -> None:
            await asyncio.sleep(max(0.0, start + wf.arrival - time.monotonic()))
            arrived = time.monotonic()
            for i, call in enumerate(wf.calls):
                await asyncio.sleep(call.gap)
                headers = {"x-saga-workflow": wf.id, "x-saga-agent": agent,
                           "x-saga-end": "true" if i == len(wf.calls) - 1 else "false"}
                if i:
                    headers["x-saga-tool"] = "tool"
                body: dict[str, Any] = {
                    "model": model, "max_tokens": call.max_tokens, "temperature": 0.0,
                    "ignore_eos": True,
                    "messages": [{"role": "user", "content": salt + call.text}],
                }
                sent = time.monotonic()
                backend, usage = -1, (-1, -1)
                try:
                    async with session.post(url + "/v1/chat/completions", json=body,
                                            headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                        held = _deferred_seconds(response.headers.get("x-saga-admission"))
                        if held is not None:
                            result.deferred[wf.id] = result.deferred.get(wf.id, 0.0) + held
                        backend = int(response.headers.get("x-saga-backend", -1))
                        result.backends[wf.id] = backend
                        if status == 200:
                            usage = _usage(payload)
                            timed = _engine_timings(payload)
                            if timed is not None:
                                result.engine_timings.append((wf.id, i, *timed))
                except (aiohttp.ClientError, TimeoutError):
                    status = 0  # the client gave up (its timeout) or lost the connection
                result.call_log.append(CallRecord(
                    wf.id, i, sent - start, time.monotonic() - sent, backend, status, *usage))
                result.calls += 1
                if status != 200:
                    result.errors += 1
                    result.failed.add(wf.id)
                    return
            result.tct[wf.id] = time.monotonic() - arrived

        watch = asyncio.create_task(_watch(start, result.stalls))
        try:
            await asyncio.gather(*(run(w) for w in workflows))
        finally:
            watch.cancel()
    return result


def _deferred_seconds(note: str | None) -> float | None:
    """The wait of a gateway's admission note ``deferred 1.234s: reason``, else None."""
    if not note or not note.startswith("deferred "):
        return None
    try:
        return float(note.split()[1].rstrip(":").removesuffix("s"))
    except (IndexError, ValueError):
        return None


def sim_workflows(
    workflows: Sequence[ReplayWorkflow], tokenizer_json: str | Path, *, salt: str = "",
    block_tokens: int = 128, agent: str = "agent",
) -> list[Workflow]:
    """The replay as the simulator's workflows (see the module doc)."""
    from tokenizers import Tokenizer  # the `engines` extra

    tok = Tokenizer.from_file(str(tokenizer_json))
    out = []
    for wf in workflows:
        chains: dict[tuple[int, tuple[int, ...]], int] = {}
        calls = []
        for i, call in enumerate(wf.calls):
            ids: list[int] = tok.encode(chat_prompt(salt + call.text),
                                        add_special_tokens=False).ids
            blocks, parent = [], -1
            for b in range(len(ids) // block_tokens):
                key = (parent, tuple(ids[b * block_tokens:(b + 1) * block_tokens]))
                parent = chains.setdefault(key, len(chains))
                blocks.append(parent)
            calls.append(Call(f"c{i}", Prompt(max(1, len(ids)), (), runs_from_ids(blocks)),
                              call.max_tokens, (f"c{i - 1}",) if i else (), call.gap,
                              "tool" if i else None))
        # the replay marks each session's last call (x-saga-end): its end is said
        out.append(Workflow(f"default/{wf.id}", "default", agent, wf.arrival, tuple(calls),
                            None, block_tokens, end_signal="explicit"))
    return out


def kv_cluster(kv_blocks: int, base: str = "cpu-tiny", efficiency: Efficiency | None = None,
               host_contention: float | None = None) -> str:
    """The ``base`` cluster preset with ``kv_blocks`` of KV per replica (what
    ``--num-gpu-blocks-override`` gives the engines, less vLLM's null block), registered
    under ``NAME-kvN`` so that the gateway and the simulator know the engines' real
    memory; returns the name. Its replicas give up retention pins for waiting calls
    even beside running ones (``pins_yield_to_waiting``), as SAGA's scheduler inside
    these vLLM engines does (saga.integrations.vllm_scheduler). ``efficiency``: the
    engines' measured speed (a calibration probe's fit, saga.bench.probe), registered
    under ``NAME-kvN-fit`` and a digest of its figures; ``host_contention``: how much a
    replica's steps slow while the other is busy (``ClusterSpec.host_contention``; None:
    ``base``'s), measured: ``-hcX`` (X to 4 decimals) in the name."""
    from saga.engine.cluster import CLUSTERS

    spec = get_cluster(base)
    name = f"{base}-kv{kv_blocks}"
    if efficiency is not None:
        digest = hashlib.sha1(efficiency.model_dump_json().encode()).hexdigest()[:8]
        name += f"-fit{digest}"
    if host_contention is None:
        host_contention = spec.host_contention
    else:
        host_contention = round(host_contention, 4)
        name += f"-hc{host_contention:g}"
    if name not in CLUSTERS:
        engine = spec.engine.model_copy(update={"kv_capacity_blocks": kv_blocks,
                                                "pins_yield_to_waiting": True})
        measured = "" if efficiency is None else ", speed from a calibration probe"
        if host_contention != spec.host_contention:
            measured += f", host contention {host_contention:g}"
        CLUSTERS[name] = spec.model_copy(update={
            "name": name, "engine": engine, "efficiency": efficiency,
            "host_contention": host_contention,
            "description": f"{spec.description} ({kv_blocks} KV blocks per replica"
                           f"{measured})"})
    return name


def _gateway_text(call: ReplayCall, salt: str) -> str:
    """The chat text the gateway reads of a replayed call (one user message, salted)."""
    return chat_text([{"role": "user", "content": salt + call.text}])


def gateway_estimates(
    workflows: Sequence[ReplayWorkflow], *, salt: str = "",
) -> dict[tuple[str, str], int]:
    """The prompt tokens the gateway estimates from each call's text (its chat text,
    characters / 4: :func:`saga.wire.prefix.estimate_tokens`), keyed as
    :func:`sim_workflows` names the calls (``default/ID``, ``cI``)."""
    return {
        (f"default/{wf.id}", f"c{i}"): estimate_tokens(_gateway_text(call, salt))
        for wf in workflows for i, call in enumerate(wf.calls)
    }


def gateway_runs(
    workflows: Sequence[ReplayWorkflow], *, salt: str = "", block_tokens: int = 128,
) -> dict[tuple[str, str], tuple[Run, ...]]:
    """Each call's prompt blocks as the gateway names them from its text
    (:func:`saga.wire.prefix.text_runs` of the chat text :func:`gateway_estimates` counts),
    keyed as :func:`sim_workflows` names the calls."""
    return {
        (f"default/{wf.id}", f"c{i}"): text_runs(_gateway_text(call, salt), block_tokens)
        for wf in workflows for i, call in enumerate(wf.calls)
    }


def simulate(
    workflows: Sequence[Workflow], cluster: str, policy: str, *, stock_engine: bool = False,
    estimates: Mapping[tuple[str, str], int] | None = None,
    runs: Mapping[tuple[str, str], tuple[Run, ...]] | None = None,
    token_scale_prior: float = 1.0,
) -> dict[str, float]:
    """Each workflow's TCT in the simulator (ids without the tenant), as
    :func:`simulate_deployed` runs it."""
    result = simulate_deployed(workflows, cluster, policy, stock_engine=stock_engine,
                               estimates=estimates, runs=runs,
                               token_scale_prior=token_scale_prior)
    return {w.workflow.split("/", 1)[-1]: w.tct for w in result.workflows}


def simulate_deployed(
    workflows: Sequence[Workflow], cluster: str, policy: str, *, stock_engine: bool = False,
    estimates: Mapping[tuple[str, str], int] | None = None, learn_token_scale: bool = True,
    runs: Mapping[tuple[str, str], tuple[Run, ...]] | None = None,
    token_scale_prior: float = 1.0,
) -> SimResult:
    """The simulation of ``policy`` as deployed. ``stock_engine``: the policy's gateway in
    front of stock vLLM (saga.sched.stock), as ``saga bench real`` deploys every policy but
    ``saga``; ``estimates``: the prompt lengths the gateway gives the policy
    (:func:`gateway_estimates`, saga.sched.estimated), scaled by the ratio the gateway
    learns from the answers when ``learn_token_scale`` (the gateway's setting of that name,
    on by default), from ``token_scale_prior`` (the gateway's) before the first. A policy in
    front of stock vLLM reads the replicas as the gateway sees them
    (saga.sched.gateway_view: its own queue, the prompts it has in flight as the KV in use,
    in its prompt count); ``saga``'s one policy object is also the scheduler inside vLLM,
    which reads vLLM's own queues, so it keeps the engine's view. ``runs``: each call's
    prompt blocks as the gateway names them (:func:`gateway_runs`), given with ``estimates``
    to the gateway-side hooks of a policy in front of stock vLLM, whose routers index what
    they routed in those blocks (saga.sched.estimated); ``saga``'s view reads the engines'
    KV events, in the engine's blocks, so it keeps those.
    """
    built = build_policy(policy)
    if stock_engine:
        built = on_stock_vllm(built)
    tokens = None
    if estimates is not None:
        estimated = with_prompt_estimates(built, estimates, learn_token_scale,
                                          runs if stock_engine else None, token_scale_prior)
        tokens = estimated.gateway_tokens
        built = estimated
    if stock_engine:
        built = with_gateway_views(built) if tokens is None else with_gateway_views(
            built, tokens)
    return Simulation(get_cluster(cluster), built, workflows).run()


class GatewayThread:
    """A gateway serving on a free loopback port from a thread of this process.

    ``with GatewayThread(config) as gw:`` -- ``gw.url`` is its base URL and ``gw.gateway``
    the :class:`Gateway` (its backends and views can be inspected; do it from tests only).
    ``gw.stalls``: the stalls of the gateway's own event loop while it served, as
    :attr:`ReplayResult.stalls` with time.monotonic() instants (its policy's work runs on
    that loop, so a long decision shows here and not in the client's).
    """

    def __init__(self, config: GatewayConfig, ready_timeout: float = 30.0) -> None:
        self.gateway = Gateway(config.model_copy(update={"port": 0}))
        self.url = ""
        self._ready_timeout = ready_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.stalls: list[tuple[float, float, float]] = []
        self._watch: asyncio.Task[None] | None = None

    async def _start(self) -> str:
        self._watch = asyncio.create_task(_watch(0.0, self.stalls))
        runner = web.AppRunner(self.gateway.app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._ready_timeout)

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        try:
            self.url = self.call(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._loop.call_soon_threadsafe(self._watch.cancel)
            self._watch = None
        if self._runner is not None:
            self.call(self._runner.cleanup())
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class PolicyRun:
    """One policy's replay on real engines, and the simulator's prediction for it."""

    policy: str
    tct: dict[str, float]
    sim_tct: dict[str, float]
    prefix_queries: float  # prompt tokens the engines looked up, this run
    prefix_hits: float  # ... and found cached
    calls: int
    errors: int
    slot_actions: dict[str, int]

    @property
    def mean_tct(self) -> float:
        return sum(self.tct.values()) / len(self.tct) if self.tct else math.nan

    @property
    def sim_mean_tct(self) -> float:
        return sum(self.sim_tct.values()) / len(self.sim_tct) if self.sim_tct else math.nan

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def compare(
    urls: Sequence[str], kind: str, workflows: Sequence[ReplayWorkflow],
    policies: Sequence[str], *, cluster: str = "cpu-tiny", block_tokens: int = 128,
    priority_scheduling: bool = True, slots: int = 4, tokenizer_json: str | Path | None = None,
    timeout: float = 600.0,
) -> list[PolicyRun]:
    """Replay ``workflows`` once per policy through a fresh gateway in front of ``urls``
    (engines of ``kind``: vllm or llamacpp); the engines' prefix-cache counters are read
    before and after each run. With ``tokenizer_json``, also simulate each run on
    ``cluster``."""
    from saga.integrations import engines as eng

    def stats(url: str) -> eng.PrefixCacheStats:
        return eng.vllm_prefix_cache(url) if kind == "vllm" else eng.llama_prefix_cache(url)

    runs = []
    nonce = f"{time.time_ns():x}"
    for policy in policies:
        salt = f"[replay {nonce} {policy}]\n"
        backends: list[dict[str, Any]] = [
            {"url": u, "kind": kind, "name": f"{kind}-{i}",
             **({"priority_scheduling": priority_scheduling} if kind == "vllm" else
                {"slots": slots, "max_concurrency": slots})}
            for i, u in enumerate(urls)
        ]
        config = GatewayConfig.model_validate({
            "policy": policy, "cluster": cluster, "block_tokens": block_tokens,
            "backends": backends, "request_timeout": timeout,
            # every call placed by the policy, as in the simulator
            "sticky_sessions": False,
        })
        before = [stats(u) for u in urls]
        actions: dict[str, int] = {}
        with GatewayThread(config) as gw:
            result = asyncio.run(replay(gw.url, workflows, salt=salt, timeout=timeout))
            for b in gw.gateway.backends:
                for name, n in getattr(b, "actions", {}).items():
                    actions[name] = actions.get(name, 0) + n
        after = [stats(u) for u in urls]
        sim: dict[str, float] = {}
        if tokenizer_json is not None:
            sim = simulate(sim_workflows(workflows, tokenizer_json, salt=salt,
                                         block_tokens=block_tokens), cluster, policy)
        runs.append(PolicyRun(
            policy, result.tct, sim,
            sum(a.queries - b.queries for a, b in zip(after, before, strict=True)),
            sum(a.hits - b.hits for a, b in zip(after, before, strict=True)),
            result.calls, result.errors, actions,
        ))
    return runs
