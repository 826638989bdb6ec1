"""`saga bench real`: the policies as deployed, on real vLLM-CPU replicas, where memory binds.

Two cases on the same engines (docs/engines.md, "The real benchmark"):

* ``memory``: LMCache agent sessions (real text) whose active contexts are several times
  what the replicas' KV holds (``--num-gpu-blocks-override``: ``kv_blocks`` blocks of 128
  tokens per replica; the issue's probe: 80 blocks, 16 sessions of 2-7k tokens arriving
  0.25 s apart);
* ``light``: fewer, shorter sessions, further apart: memory does not bind.

Policies as deployed: ``saga`` is SAGA's gateway in front of vLLM running
``SagaScheduler`` (SAGA's policy inside the engine); every other policy is its gateway
policy in front of stock vLLM (FCFS, no priorities). Each engine set is started once: two
replicas with SAGA's scheduler and two stock ones, one core each (replica *i* of each set
on core *i*; a run uses one set, the other idles). Before each run the replicas' prefix
cache is reset (``POST /reset_prefix_cache``, vLLM's dev endpoint) and the prompts carry a
salt of the run, so nothing is shared between runs. Runs are interleaved (every policy once
per repetition, the order rotated by one each repetition). The gateway subscribes to the
engines' KV events (``saga.gateway.kv_events``) for the policies that deploy with an exact
view of the caches (``saga``); the others route on their own estimate (llm-d's baseline
models its approximate prefix scorer).

A workflow a gateway's gate defers waits up to ``max_defer``, set to the client's timeout
(an agent waits for its call). A call that is refused, fails or is given up on by the client
ends its session, counted as failed; a failed session's TCT is the whole run's duration (a
bound that never flatters the policy).

The simulator runs the same sessions (the tiny model's tokenizer, the same salt scheme) on
``cpu-tiny`` with the same KV size, at the engines' speed alone that a calibration probe
measured before each repetition, each step slowed while the other replica is busy by
``cpu-tiny``'s host contention (saga.bench.probe, saga.engine.contention; the probe's own
contention is recorded, and simulated only with ``RealBench.contention = "probe"``; the
gateways run the same preset), each policy as deployed: every policy but ``saga`` over stock vLLM's
rules (saga.sched.stock) reading the replicas as the gateway sees them
(saga.sched.gateway_view), the gateway's prompt estimates in the policy's gateway-side
hooks (saga.sched.estimated);
``sim_error[policy]`` is its relative error of each policy's mean TCT in the memory case,
``sim_error_light`` in the light case (docs/engines.md, "Simulator agreement");
``sim_band`` the same again at each probe's speed in turn, fastest and slowest (the
engines' drift alone moves it that far: docs/engines.md, "Decode speed under the probes");
``sim_ranking[case]`` the raw orders and the pairs the real runs separate
(saga.bench.real_ranking).

``engine="llama"`` (or ``"both"``, vLLM first: the CLI's default, the whole benchmark) runs
``RealBench.llama_cases`` on two llama.cpp replicas (saga.bench.real_llama): the same
sessions with shorter prompts, as one llama.cpp thread prefills 2-3x slower than vLLM-CPU.
Their figures go under ``summary["llamacpp"]``, in the same shape, so the top-level keys
stay vLLM's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saga.bench.probe import ProbeSettings
from saga.bench.real_llama import SUMMARY_KEY as LLAMA_KEY
from saga.bench.real_llama import LlamaSettings
from saga.errors import UserError

if TYPE_CHECKING:
    from saga.gateway.config import GatewayConfig
    from saga.integrations.replay import ReplayWorkflow

#: What a gateway subscribes to KV events for (see the module doc). llm-d's baseline keeps
#: its own routed prefix index (saga.sched.baselines.llmd: its approximate scorer), so
#: events would not change it; SAGA reads the view's.
EXACT_VIEW_POLICIES = frozenset({"saga"})


class RealCase(BaseModel):
    """One workload on the real engines."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    trace: str = Field("miniswe", description="LMCache agent trace (lmcache_agent/NAME.jsonl.gz)")
    sessions: int = Field(ge=1)
    calls: int = Field(ge=1, description="most calls per session")
    max_prompt_chars: int = Field(ge=512, description="each prompt cut to its first N chars")
    arrival_interval: float = Field(gt=0, description="seconds between session starts")
    max_tokens: int = Field(32, ge=1, description="cap on each call's output")
    time_compress: float = Field(60.0, gt=0, description="trace gaps divided by this")
    max_gap: float = Field(2.0, ge=0, description="longest tool gap, seconds")
    repetitions: int | None = Field(
        None, ge=1, description="this case's interleaved repetitions (None: the bench's)")


#: The light case's repetitions: a run that the machine slows moves a light ratio of 3
#: repetitions by several percent (docs/engines.md, "The light case, six times").
LIGHT_REPETITIONS = 6


class RealBench(BaseModel):
    """The real benchmark's settings (``quick()`` is the small version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policies: tuple[str, ...] = ("saga", "vllm-affinity", "sglang", "continuum", "llm-d")
    repetitions: int = Field(3, ge=1)
    kv_blocks: int = Field(
        81, ge=2, description="--num-gpu-blocks-override (1 is vLLM's null block)")
    block_tokens: int = 128
    max_model_len: int = 8192
    max_num_batched_tokens: int = 4096
    cases: tuple[RealCase, ...] = (
        # Sized so that the whole benchmark, both engines with 3 interleaved repetitions
        # of every policy, fits the issue's 15 minutes on 2 cores (docs/engines.md, "The
        # 15-minute benchmark"): 12 sessions of 3 calls arriving in a burst (contexts
        # about 2.5x the KV; the simulator: saga/vllm-affinity 2.0x, against 2.6x for
        # the 16 x 5 of runs/real-s33, which took 11 minutes on vLLM alone). The light
        # case's sessions (about 0.9 s on a quiet machine) are over before the next comes;
        # it runs twice as often, short: what moves it is the engines' speed from one run
        # to the next (docs/engines.md, "The light case, six times")
        RealCase(name="memory", sessions=12, calls=3, max_prompt_chars=16000,
                 arrival_interval=0.25),
        RealCase(name="light", sessions=3, calls=3, max_prompt_chars=6000,
                 arrival_interval=1.0, repetitions=LIGHT_REPETITIONS),
    )
    llama_cases: tuple[RealCase, ...] = Field(
        (
            # the same sessions, each prompt cut to 7,000 chars (at most about 2,900
            # tokens): one llama.cpp thread prefills 2-3x slower than vLLM-CPU
            RealCase(name="memory", sessions=12, calls=3, max_prompt_chars=7000,
                     arrival_interval=0.25),
            RealCase(name="light", sessions=3, calls=2, max_prompt_chars=6000,
                     arrival_interval=1.0, repetitions=LIGHT_REPETITIONS),
        ),
        description="the cases on llama.cpp (smaller prompts: its prefill is slower)")
    request_timeout: float = 300.0
    # An agent client waits for its call up to its own timeout; a gateway that answers 429
    # sooner (its default max_defer, 30 s, is for interactive chat) turns a workflow the
    # memory gate holds at the door into lost work. Deployed in front of agents, the gate's
    # wait is bounded by the client's timeout, so the bench sets max_defer to it.
    max_defer: float = Field(300.0, ge=0, description="the gateway's max_defer, seconds")
    token_scale_prior: float = Field(
        1.6, gt=0, description="the gateways' token_scale_prior: the tiny model's tokenizer "
        "makes about 2.5 characters a token (1.62 estimated tokens per token on this "
        "repository's Python source, 1.59-1.64 on the cases' agent text), so the sessions "
        "arriving before the first answer are counted in the engines' tokens as the later "
        "ones (the light case's tie between two replicas went by working sets 0.6x apart "
        "in unit: docs/engines.md, \"The light case's tie\")")
    learn_engine_speed: bool = Field(
        False, description="the gateway's learn_engine_speed: its views age the running "
        "prefills at the speed the answers show; off: measured on, it did not change "
        "where the calls went (docs/engines.md, \"Real saga against simulated saga, call "
        "by call\")")
    llama: LlamaSettings = Field(default_factory=LlamaSettings,
                                 description="the llama.cpp replicas (saga.bench.real_llama)")
    calibrate: bool = Field(
        True, description="probe the engines' speed at the start (and the end) of the bench "
        "and simulate with it (saga.bench.probe); off: the fixed cpu-tiny preset")
    probe: ProbeSettings = Field(default_factory=ProbeSettings,
                                 description="what the calibration probe times")
    contention: Literal["preset", "probe"] = Field(
        "preset", description="the simulator's host contention (saga.engine.contention): "
        "``preset``, cpu-tiny's (0.29, the busy engines' slowdown in the engine logs of "
        "earlier runs), or ``probe``, the probe's together-over-alone slowdown, which its "
        "engines-only set understates: 0.00-0.05 in 7 of the 8 probes of two quiet records "
        "whose busy engines ran 1.15-1.17x slower than simulated with it (docs/engines.md, "
        "\"Simulator agreement under drift\"); recorded either way")

    @model_validator(mode="after")
    def _one_request_fits(self) -> RealBench:
        # vLLM refuses to start when one request of max_model_len cannot fit its KV
        usable = (self.kv_blocks - 1) * self.block_tokens
        if self.max_model_len > usable:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the KV of "
                             f"{self.kv_blocks - 1} usable blocks ({usable} tokens)")
        return self

    def reps(self, case: RealCase) -> int:
        """How many times ``case`` runs: its own repetitions, else the bench's."""
        return self.repetitions if case.repetitions is None else case.repetitions

    def most_reps(self) -> int:
        """The repetitions of the case that repeats most (how many rounds run)."""
        return max((self.reps(c) for c in self.cases), default=self.repetitions)

    def only(
        self, cases: Sequence[str] = (), repetitions: int | None = None,
        policies: Sequence[str] = (),
    ) -> RealBench:
        """These cases only (all when empty), ``repetitions`` times (as set when None), these
        of its policies only (all when empty; ``saga`` always, every figure is its ratio):
        to iterate on one case, e.g. ``saga bench real --case light --repetitions 1``, or to
        pair two codes' runs of a few policies (benchmarks/real_ab.py)."""
        known = [c.name for c in self.cases]
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise UserError(f"no case {', '.join(unknown)} in the real benchmark "
                            f"(cases: {', '.join(known)})")
        strange = [p for p in policies if p not in self.policies]
        if strange:
            raise UserError(f"no policy {', '.join(strange)} in the real benchmark "
                            f"(policies: {', '.join(self.policies)})")
        if policies and "saga" not in policies:
            raise UserError("--policies must name saga: the real benchmark's figures are "
                            "saga's ratios over the others")
        update: dict[str, Any] = {}
        if cases:
            update["cases"] = tuple(c for c in self.cases if c.name in cases)
            update["llama_cases"] = tuple(c for c in self.llama_cases if c.name in cases)
        if policies:  # the bench's order (the interleaving rotates it), each once
            update["policies"] = tuple(p for p in self.policies if p in policies)
        if repetitions is not None:  # every case that many times, its own count or not
            update["repetitions"] = repetitions
            for key in ("cases", "llama_cases"):
                update[key] = tuple(c.model_copy(update={"repetitions": None})
                                    for c in update.get(key, getattr(self, key)))
        return self.model_validate({**self.model_dump(), **update})

    def quick(self) -> RealBench:
        return self.model_copy(update={
            "repetitions": 1,
            "cases": (
                RealCase(name="memory", sessions=10, calls=4, max_prompt_chars=16000,
                         arrival_interval=0.25),
                RealCase(name="light", sessions=4, calls=3, max_prompt_chars=6000,
                         arrival_interval=2.0),
            ),
            "llama_cases": (
                RealCase(name="memory", sessions=8, calls=3, max_prompt_chars=7000,
                         arrival_interval=0.25),
                RealCase(name="light", sessions=4, calls=3, max_prompt_chars=6000,
                         arrival_interval=2.0),
            ),
        })

    def for_llama(self) -> RealBench:
        """This bench with the llama.cpp cases as its cases (what saga.bench.real_llama
        runs and records)."""
        return self.model_copy(update={"cases": self.llama_cases})


def trace_path(name: str) -> Path:
    """An LMCache agent trace of the shared traces folder (saga.workloads.paths)."""
    from saga.workloads.paths import default_trace

    return default_trace(f"lmcache_agent/{name}.jsonl.gz")


class Engines:
    """The running replicas: ``sets["saga"]`` (SAGA's scheduler inside) and
    ``sets["stock"]``, each a list of (base URL, KV-event index or None)."""

    def __init__(self) -> None:
        self.sets: dict[str, list[tuple[str, Any]]] = {}
        self.procs: list[Any] = []
        self.subscribers: list[Any] = []


@contextmanager
def start_engines(bench: RealBench, log_dir: Path, events: bool) -> Iterator[Engines]:
    """Start both engine sets and their KV-event subscribers; stop everything at the end."""
    from saga.integrations import engines as eng

    if eng.find_vllm_python() is None:
        raise UserError("vLLM-CPU is not installed: run `bash scripts/engines.sh install vllm`")
    out = Engines()
    cores = os.cpu_count() or 1
    kinds: list[tuple[str, Any]] = []  # each engine's set and KV-event index, in start order

    def starters() -> Iterator[eng.Starter]:
        for kind in ("saga", "stock"):
            for i in range(2):
                # prompt-tokens details: each answer says how many of its prompt tokens
                # hit the prefix cache (the runs' per-call log)
                args = ["--num-gpu-blocks-override", str(bench.kv_blocks), "--block-size",
                        str(bench.block_tokens), "--max-num-batched-tokens",
                        str(bench.max_num_batched_tokens), "--enable-prompt-tokens-details"]
                index = None
                if events:
                    from saga.gateway.kv_events import KVEventSubscriber, KVIndex, kv_events_config

                    endpoint = f"tcp://127.0.0.1:{eng.free_port()}"
                    index = KVIndex()
                    out.subscribers.append(KVEventSubscriber(endpoint, index).start())
                    args += ["--kv-events-config", kv_events_config(endpoint)]
                kinds.append((kind, index))
                yield partial(
                    eng.start_vllm, eng.tiny_model_dir(), eng.free_port(), extra_args=args,
                    max_model_len=bench.max_model_len, cpu_threads=str(i % cores),
                    log_dir=log_dir, saga_scheduler=kind == "saga",
                    env={"VLLM_SERVER_DEV_MODE": "1"},  # POST /reset_prefix_cache
                )

    try:
        with eng.running_engines(starters(), ready_timeout=900) as procs:
            out.procs = list(procs)
            for (kind, index), proc in zip(kinds, procs, strict=True):
                out.sets.setdefault(kind, []).append((proc.base_url, index))
            yield out
    finally:
        for sub in out.subscribers:
            sub.stop()


def reset_prefix_cache(url: str) -> None:
    request = urllib.request.Request(url + "/reset_prefix_cache", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def _vllm_call(url: str, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """One completion on the vLLM replica at ``url`` (nothing else running there); its
    prefill and decode seconds from the replica's own histograms
    (``vllm:request_prefill_time_seconds``, ``vllm:request_decode_time_seconds``:
    saga.bench.probe)."""
    from saga.integrations import engines as eng

    names = ("vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds")

    def read() -> tuple[float, float, float]:
        metrics = eng.parse_prometheus(eng._http_text(url + "/metrics"))
        total = [sum(v for _, v in metrics.get(n + "_sum", [])) for n in names]
        return total[0], total[1], sum(v for _, v in metrics.get(names[0] + "_count", []))

    before = read()
    eng.vllm_completion(url, prompt, max_tokens)
    after = read()
    for _ in range(50):  # the API server records a finished request's times as it answers
        if after[2] > before[2]:
            break
        time.sleep(0.02)
        after = read()
    return after[0] - before[0], after[1] - before[1]


def calibrate_engines(
    spec: RealBench, urls: Sequence[str], *, seed: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any] | None:
    """The calibration probe on the vLLM replicas at ``urls`` (saga.bench.probe), fitted
    over the ``cpu-tiny`` preset; None when the bench does not calibrate. A fit the preset
    cannot take (past the hardware's peak) is recorded as ``error``, with no preset."""
    if not spec.calibrate:
        return None
    from saga.bench.probe import fit_record, probe
    from saga.engine.cluster import get_cluster

    base = get_cluster("cpu-tiny").cost_model().efficiency
    probed = probe(urls, _vllm_call, reset_prefix_cache, spec.probe, seed=seed, clock=clock)
    try:
        return fit_record(probed, base, spec.max_num_batched_tokens)
    except ValueError as exc:
        return {"error": str(exc), "probe_seconds": probed["seconds"], "points": probed}


def calibrated_cluster(spec: RealBench, calibration: dict[str, Any] | None) -> str:
    """The simulator's (and the gateways') cluster for this run: ``cpu-tiny`` with the
    engines' KV and, when the probe fitted them, the engines' speed alone; a step slows
    while the other replica is busy (saga.engine.contention) by ``spec.contention``'s
    host contention: cpu-tiny's, or the probe's (saga.bench.probe.host_contention)."""
    from saga.bench.probe import host_contention
    from saga.engine.costmodel import Efficiency
    from saga.integrations.replay import kv_cluster

    if calibration is None or "solo" not in calibration:
        return kv_cluster(spec.kv_blocks - 1)
    solo = Efficiency.model_validate(calibration["solo"]["efficiency"])
    measured = host_contention(calibration) if spec.contention == "probe" else None
    return kv_cluster(spec.kv_blocks - 1, efficiency=solo, host_contention=measured)


def bracketed(spec: RealBench, calibration: dict[str, Any] | None,
              clusters: dict[int, str]) -> dict[int, str]:
    """The preset each repetition is simulated on: the engines' speed midway (the geometric
    mean of each scale, alone and together) between the probe before the repetition and
    the one after it (the next repetition's, or the end probe; the repetitions past the
    probed ones ran between the last and the end probe). The machine's speed drifts
    within a run (runs/real-s42: a decode step 6.2-9.2 ms at the probes before the
    repetitions, 9.1-11.3 ms at the end); a repetition at the speed of the probe before it
    is simulated at its start's speed. The gateways ran ``clusters`` (the probe before:
    they cannot know the next); where a probe is missing or not fitted, those stay."""
    if calibration is None or "end" not in calibration:
        return dict(clusters)
    from saga.bench.probe import between
    from saga.engine.cluster import get_cluster

    base = get_cluster("cpu-tiny").cost_model().efficiency
    probes = [*calibration["repetitions"], calibration["end"]]
    last = len(calibration["repetitions"]) - 1
    out = dict(clusters)
    for rep in clusters:
        before, after = probes[min(rep, last)], probes[min(rep, last) + 1]
        if "solo" in before and "solo" in after:
            out[rep] = calibrated_cluster(spec, between(before, after, base))
    return out


def _fitted_probes(calibration: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The probes whose fit succeeded, in the order they ran (the end probe last)."""
    if calibration is None:
        return []
    probes = [*calibration.get("repetitions", []),
              *([calibration["end"]] if "end" in calibration else [])]
    return [p for p in probes if "solo" in p]


def probe_clusters(spec: RealBench, calibration: dict[str, Any] | None) -> list[str]:
    """The preset of each fitted probe, in order, each once: the engines' speeds the run
    measured. The simulator's figures at each in turn (``sim_band``) say how far its
    prediction moves with the speed alone, next to its error (docs/engines.md, "Decode
    speed under the probes")."""
    return list(dict.fromkeys(calibrated_cluster(spec, p) for p in _fitted_probes(calibration)))


def probe_spread(calibration: dict[str, Any] | None) -> dict[str, float]:
    """How far the engines' speed alone moved over the run's probes: the slowest probe's
    prefill and decode scale over the fastest's ({} with fewer than two fitted probes)."""
    probes = _fitted_probes(calibration)
    if len(probes) < 2:
        return {}
    out = {}
    for scale in ("prefill", "decode"):
        values = [p["solo"][f"{scale}_scale"] for p in probes]
        out[scale] = max(values) / min(values)
    return out


def drift(start: dict[str, Any], end: dict[str, Any]) -> dict[str, float]:
    """How far the engines' speed moved between two probes: each scale at the end over
    the same at the start (>1: slower at the end), for the engines alone and together."""
    return {f"{which}_{scale}": end[which][f"{scale}_scale"] / start[which][f"{scale}_scale"]
            for which in ("solo", "together", "preset") for scale in ("prefill", "decode")
            if which in start and which in end}


def gateway_config(
    bench: RealBench, urls: Sequence[str], policy: str, cluster: str,
) -> GatewayConfig:
    """The gateway of one run: ``policy`` in front of vLLM replicas at ``urls``; every call
    placed by the policy (``sticky_sessions`` off, as in the simulator); a workflow the
    policy defers waits up to ``max_defer`` (:class:`RealBench`)."""
    from saga.gateway.config import GatewayConfig

    return GatewayConfig.model_validate({
        "policy": policy, "cluster": cluster, "block_tokens": bench.block_tokens,
        "backends": [{"url": u, "kind": "vllm", "name": f"vllm-{i}"}
                     for i, u in enumerate(urls)],
        "request_timeout": bench.request_timeout, "sticky_sessions": False,
        "max_defer": bench.max_defer, "learn_engine_speed": bench.learn_engine_speed,
        "token_scale_prior": bench.token_scale_prior,
    })


def _run_once(
    bench: RealBench, replicas: Sequence[tuple[str, Any]], policy: str,
    workflows: Sequence[Any], salt: str, cluster: str,
) -> dict[str, Any]:
    """One policy, one case, one repetition: the replay's figures."""
    from saga.integrations import engines as eng
    from saga.integrations.replay import GatewayThread, replay

    urls = [u for u, _ in replicas]
    for url in urls:
        reset_prefix_cache(url)
    time.sleep(0.3)  # the reset's AllBlocksCleared reaches the indexes
    config = gateway_config(bench, urls, policy, cluster)
    before = [eng.vllm_prefix_cache(u) for u in urls]
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    with GatewayThread(config) as gw:
        if policy in EXACT_VIEW_POLICIES:
            for view, (_, index) in zip(gw.gateway.views, replicas, strict=True):
                view.events = index
        result = asyncio.run(replay(gw.url, workflows, salt=salt,
                                    timeout=bench.request_timeout))
        retentions = dict(gw.gateway.metrics.retentions)
        gateway_stalls = [[round(t - result.started, 3), late, cpu]
                          for t, late, cpu in gw.stalls]
        speed = gw.gateway.views[0].speed if gw.gateway.views else None
        # on the replay's clock (the gateway's counts from when it was built)
        shift = time.monotonic() - gw.gateway.now() - result.started
        moves = [[round(m.at + shift, 3), *m[1:]] for m in gw.gateway.metrics.moves]
        timed = gateway_timings(gw.gateway.metrics, shift)
        lookups = [list(v.prefix_lookups) for v in gw.gateway.views]
        for view in gw.gateway.views:
            view.events = None
    wall = time.monotonic() - started
    load.append(os.getloadavg()[0])
    after = [eng.vllm_prefix_cache(u) for u in urls]
    learned = {} if speed is None else {"engine_speed": [speed.factor, speed.samples]}
    return run_record(result, wall, load, before, after, retentions, lookups,
                      gateway_stalls=gateway_stalls, moves=moves, **timed, **learned)


def gateway_timings(metrics: Any, shift: float) -> dict[str, list[list[Any]]]:
    """The gateway's per-call phases and retention steps (saga.gateway.metrics.CallPhases,
    RetainTiming) as run-record fields, their instants moved by ``shift`` seconds onto the
    replay's clock."""
    return {
        "phases": [[round(p.at + shift, 3), *p[1:]] for p in metrics.phases],
        "retain_steps": [[round(r.at + shift, 3), *r[1:]] for r in metrics.retain_steps],
    }


def run_record(
    result: Any, wall: float, load: list[float], before: Sequence[Any], after: Sequence[Any],
    retentions: dict[str, int], lookups: list[Any], **extra: Any,
) -> dict[str, Any]:
    """One run's record (a line of runs.jsonl) from its replay ``result``
    (saga.integrations.replay) and the engines' prefix-cache counters before and after."""
    tct = dict(result.tct)
    for wf in result.failed:  # a failed session: the run's duration, never flattering
        tct[wf] = wall
    return {
        "tct": tct, "failed": sorted(result.failed), "deferred": dict(result.deferred),
        "calls": result.calls, "errors": result.errors, "wall": wall, "load": load,
        "prefix_queries": sum(a.queries - b.queries for a, b in zip(after, before, strict=True)),
        "prefix_hits": sum(a.hits - b.hits for a, b in zip(after, before, strict=True)),
        "retentions": retentions, "prefix_lookups": lookups,
        "backends": sorted(result.backends.values()),
        # per stall of the client's event loop: when (s after the start), how late (s) and
        # the CPU seconds this process used meanwhile (saga.integrations.replay._watch)
        "stalls": [list(x) for x in result.stalls],
        # per call: workflow, index, sent (s), latency (s), replica, status, prompt and
        # cached tokens (saga.integrations.replay.CallRecord)
        "call_log": [list(dataclasses.astuple(c)) for c in result.call_log],
        # per call the engine timed (llama.cpp): workflow, index, prefill and decode seconds
        "engine_timings": [list(t) for t in result.engine_timings],
        **extra,
    }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


#: `saga bench real --engine`: which engines run (both: vLLM first, then llama.cpp).
ENGINES = ("vllm", "llama", "both")


def replay_plans(cases: Sequence[RealCase]) -> dict[str, list[ReplayWorkflow]]:
    """Each case's replay (its trace's sessions, arrivals, gaps and output caps)."""
    from saga.integrations.replay import load_sessions, plan

    plans = {}
    for case in cases:
        path = trace_path(case.trace)
        if not path.exists():
            raise UserError(f"trace not found: {path} (the LMCache agent traces)")
        sessions = load_sessions(path, sessions=case.sessions, calls=case.calls,
                                 max_prompt_chars=case.max_prompt_chars)
        plans[case.name] = plan(sessions, max_tokens=case.max_tokens,
                                time_compress=case.time_compress, max_gap=case.max_gap,
                                arrival_interval=case.arrival_interval)
    return plans


def interleaved(spec: RealBench) -> Iterator[tuple[int, RealCase, str]]:
    """The runs' order: per repetition, each case that repeats that often
    (:meth:`RealBench.reps`), every policy once, the policies' order rotated by one each
    repetition."""
    for rep in range(spec.most_reps()):
        order = list(spec.policies[rep % len(spec.policies):]) + list(
            spec.policies[:rep % len(spec.policies)])
        for case in spec.cases:
            if rep >= spec.reps(case):
                continue
            for policy in order:
                yield rep, case, policy


def run_real(
    out: Path, *, quick: bool = False, bench: RealBench | None = None,
    progress: Callable[[str], None] | None = None, events: bool = True,
    simulate: bool = True, engine: str = "vllm", cases: Sequence[str] = (),
    repetitions: int | None = None, policies: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the real benchmark on ``engine`` (one of :data:`ENGINES`); write
    ``out/summary.json`` and ``out/real.md``. ``cases``, ``repetitions`` and ``policies``:
    :meth:`RealBench.only` (after ``quick``)."""
    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    from saga.integrations import engines as eng

    if progress is None:
        def progress(message: str) -> None:
            print(message, flush=True)
    begun = time.monotonic()
    spec = bench or RealBench()
    if quick:
        spec = spec.quick()
    spec = spec.only(cases, repetitions, policies)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.jsonl").unlink(missing_ok=True)
    # every engine and trace is checked before any engine starts: the llama.cpp leg of
    # `both` must not fail after the vLLM leg's minutes
    if engine != "vllm" and eng.find_llama_server() is None:
        raise UserError("llama-server is not built: run `bash scripts/engines.sh install "
                        "llamacpp` (or `--engine vllm`)")
    if engine != "llama" and eng.find_vllm_python() is None:
        raise UserError("vLLM-CPU is not installed: run `bash scripts/engines.sh install vllm` "
                        "(or `--engine llama`)")
    plans = replay_plans(spec.cases) if engine != "llama" else {}
    llama_spec = spec.for_llama()
    llama_plans = replay_plans(llama_spec.cases) if engine != "vllm" else {}

    def record(run: dict[str, Any]) -> None:
        with (out / "runs.jsonl").open("a") as f:  # kept if a later step fails
            f.write(json.dumps(run) + "\n")

    if engine == "llama":
        from saga.bench.real_llama import run_llama

        summary = {"scenario": "real", "quick": quick, "engines": [LLAMA_KEY],
                   LLAMA_KEY: run_llama(llama_spec, llama_plans, out, quick=quick,
                                        progress=progress, record=record)}
        return _written(out, summary, begun)
    nonce = f"{time.time_ns():x}"
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with start_engines(spec, out / "logs", events) as engines:
        progress(f"engines ready in {time.monotonic() - started:.0f} s")
        # the stock set: the engines of every policy but saga (the same vLLM build)
        probed = [u for u, _ in engines.sets["stock"]]
        calibration: dict[str, Any] | None = None
        clusters: dict[int, str] = {}  # repetition -> the preset its runs are simulated on
        for rep, case, policy in interleaved(spec):
            if rep not in clusters and rep >= spec.repetitions and clusters:
                # the repetitions only a case of its own count runs (the light case's, a
                # few seconds each) are simulated at the last probe's speed
                clusters[rep] = clusters[rep - 1]
            if rep not in clusters:
                # a probe before each repetition: the engines' speed moves with the machine
                probe = calibrate_engines(spec, probed, seed=rep)
                if probe is not None:
                    calibration = calibration or {"repetitions": []}
                    calibration["repetitions"].append(probe)
                    progress(_calibration_line(f"repetition {rep}", probe))
                clusters[rep] = calibrated_cluster(spec, probe)
            salt = f"[real {nonce} {case.name} {rep} {policy}]\n"
            replicas = engines.sets["saga" if policy == "saga" else "stock"]
            run = _run_once(spec, replicas, policy, plans[case.name], salt, clusters[rep])
            run.update(case=case.name, policy=policy, repetition=rep)
            runs.append(run)
            record(run)
            progress(f"{case.name} rep {rep} {policy}: mean TCT "
                     f"{_mean(list(run['tct'].values())):.2f} s, failed "
                     f"{len(run['failed'])}, hits {run['prefix_hits']:.0f}/"
                     f"{run['prefix_queries']:.0f} ({run['wall']:.0f} s)")
        if calibration is not None:
            end = calibrate_engines(spec, probed, seed=spec.most_reps())
            if end is not None:  # how far the engines drifted: reported, not used
                progress(_calibration_line("end", end))
                calibration["end"] = end
                first = calibration["repetitions"][0]
                if "preset" in first and "preset" in end:
                    calibration["drift"] = drift(first, end)
            calibration["probe_seconds"] = sum(
                r["probe_seconds"] for r in calibration["repetitions"])
    wall = time.monotonic() - started
    simulated, sim, band = simulate_cases(spec, plans, calibration, clusters, simulate)
    if calibration is not None and simulated != clusters:
        calibration["bracketed"] = True
    summary = summarize(spec, runs, sim, quick=quick, wall=wall, calibration=calibration,
                        clusters=[simulated[r] for r in sorted(simulated)], band=band)
    if simulated != clusters:
        summary["gateway_clusters"] = [clusters[r] for r in sorted(clusters)]
    if engine == "both":
        from saga.bench.real_llama import run_llama

        summary["engines"] = ["vllm-cpu", LLAMA_KEY]
        summary[LLAMA_KEY] = run_llama(llama_spec, llama_plans, out, quick=quick,
                                       progress=progress, record=record)
    return _written(out, summary, begun)


def simulate_cases(
    spec: RealBench, plans: dict[str, list[ReplayWorkflow]],
    calibration: dict[str, Any] | None, clusters: dict[int, str], simulate: bool = True,
) -> tuple[dict[int, str], dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """The simulator's part of a run: the preset each repetition is simulated on
    (:func:`bracketed` over ``clusters``, the presets the gateways ran), each case's mean
    TCT per policy over its repetitions, and per case and policy the mean TCT at the
    fastest and the slowest probe's speed (empty with fewer than two probes). Nothing is
    simulated when ``simulate`` is False or the tiny model is not built."""
    from saga.integrations import engines as eng

    simulated = bracketed(spec, calibration, clusters)
    sim: dict[str, dict[str, float]] = {}
    band: dict[str, dict[str, list[float]]] = {}
    tokenizer = eng.tiny_model_dir() / "tokenizer.json"
    if not simulate or not tokenizer.exists():
        return simulated, sim, band
    from saga.integrations.replay import gateway_estimates, gateway_runs, sim_workflows
    from saga.integrations.replay import simulate as sim_run

    # each probe's speed in turn too (``sim_band``): how far the prediction moves with
    # the engines' speed alone, which drifts under the runs
    speeds = probe_clusters(spec, calibration)
    if len(speeds) < 2:
        speeds = []
    for case in spec.cases:
        salt = f"[real sim {case.name}]\n"
        wfs = sim_workflows(plans[case.name], tokenizer, salt=salt,
                            block_tokens=spec.block_tokens)
        # each policy as deployed: the gateway's prompt estimates (and, over stock
        # vLLM, its prompt blocks), stock vLLM under every policy but saga
        # (docs/engines.md, "Simulator agreement" and "... under drift"); each
        # repetition at the speed between the probes around it (:func:`bracketed`),
        # the mean over the case's repetitions
        seen = gateway_estimates(plans[case.name], salt=salt)
        named = gateway_runs(plans[case.name], salt=salt, block_tokens=spec.block_tokens)
        reps = [r for r in sorted(simulated) if r < spec.reps(case)]
        at = {c: {p: _mean(list(sim_run(
                      wfs, c, p, stock_engine=p != "saga", estimates=seen, runs=named,
                      token_scale_prior=spec.token_scale_prior).values()))
                  for p in spec.policies}
              for c in {*(simulated[r] for r in reps), *speeds}}
        sim[case.name] = {p: _mean([at[simulated[r]][p] for r in reps])
                          for p in spec.policies}
        if speeds:
            band[case.name] = {p: [min(at[c][p] for c in speeds),
                                   max(at[c][p] for c in speeds)] for p in spec.policies}
    return simulated, sim, band


def _written(out: Path, summary: dict[str, Any], begun: float) -> dict[str, Any]:
    """``summary`` with the whole run's wall time since ``begun`` (the issue's budget is
    for this: engine starts, probes and the simulator included), written to
    ``out/summary.json`` and ``out/real.md``."""
    summary["total_wall_seconds"] = time.monotonic() - begun
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "real.md").write_text(render_markdown(summary))
    return summary


def _calibration_line(when: str, calibration: dict[str, Any]) -> str:
    if "preset" not in calibration:
        return f"calibration probe ({when}) not fitted: {calibration.get('error')}"
    solo, together = calibration["solo"], calibration["together"]
    return (f"calibration probe ({when}, {calibration['probe_seconds']:.1f} s): prefill/decode "
            f"x{solo['prefill_scale']:.2f}/{solo['decode_scale']:.2f} of cpu-tiny alone, "
            f"x{together['prefill_scale']:.2f}/{together['decode_scale']:.2f} together "
            f"(host contention {calibration.get('contention', 0.0):.2f})")


def summarize(
    spec: RealBench, runs: Sequence[dict[str, Any]], sim: dict[str, dict[str, float]], *,
    quick: bool, wall: float, engine: str = "vllm-cpu",
    calibration: dict[str, Any] | None = None, clusters: Sequence[str] = (),
    band: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, Any]:
    """summary.json (of one engine): per case and policy, the pooled TCTs; the speedups
    of ``saga``; the simulator's error per case and its ranking against the real one;
    ``calibration``: the probes' record (saga.bench.probe), apart from every figure of
    the runs; ``clusters``: the preset the simulator ran each repetition on; ``band``:
    per case and policy, the simulated mean TCT at the fastest and the slowest of the
    probes' speeds (:func:`probe_clusters`), written with its errors as ``sim_band``."""
    from saga.bench.real_ranking import separated_pairs

    cases: dict[str, dict[str, Any]] = {}
    paired = paired_tcts(runs)
    for run in runs:
        case, policy = run["case"], run["policy"]
        entry = cases.setdefault(case, {}).setdefault(policy, {
            "runs": [], "mean_tct": math.nan, "failed": 0, "deferred": 0,
            "deferred_seconds": 0.0, "prefix_hits": 0.0,
            "prefix_queries": 0.0, "retentions": {}, "estimate_blocks": 0,
            "event_blocks": 0, "lookups": 0})
        mean = _mean(list(run["tct"].values()))
        entry["runs"].append({"repetition": run["repetition"], "mean_tct": mean,
                              "failed": len(run["failed"]), "wall": run["wall"],
                              "load": run["load"], "calls": run["calls"],
                              "stall": max((x[1] for x in run.get("stalls", ())),
                                           default=0.0),
                              "gateway_stall": max(
                                  (x[1] for x in run.get("gateway_stalls", ())),
                                  default=0.0)})
        entry["failed"] += len(run["failed"])
        held = run.get("deferred", {})  # sessions the gate held at the door, and how long
        entry["deferred"] += len(held)
        entry["deferred_seconds"] += sum(held.values())
        entry["prefix_hits"] += run["prefix_hits"]
        entry["prefix_queries"] += run["prefix_queries"]
        for k, v in run["retentions"].items():
            entry["retentions"][k] = entry["retentions"].get(k, 0) + v
        for n, est, kept in run["prefix_lookups"]:
            entry["lookups"] += n
            entry["estimate_blocks"] += est
            entry["event_blocks"] += kept
    for per_policy in cases.values():
        for entry in per_policy.values():
            entry["mean_tct"] = _mean([r["mean_tct"] for r in entry["runs"]])
            q = entry["prefix_queries"]
            entry["hit_rate"] = entry["prefix_hits"] / q if q else 0.0
    summary: dict[str, Any] = {
        "scenario": "real", "quick": quick, "engine": engine,
        "settings": json.loads(spec.model_dump_json()), "cases": cases,
        "wall_seconds": wall,
        "load_average": _load_stats(runs),
    }
    summary |= speedups(runs)
    if sim:
        summary["sim_mean_tct"] = sim
        for case, key in (("memory", "sim_error"), ("light", "sim_error_light")):
            real = cases.get(case, {})
            summary[key] = {
                p: (sim[case][p] - real[p]["mean_tct"]) / real[p]["mean_tct"]
                for p in real if p in sim.get(case, {})}
        summary["sim_ranking"] = {
            case: ranking({p: e["mean_tct"] for p, e in rows.items()}, sim[case])
            | separated_pairs(paired[case], sim[case])
            for case, rows in cases.items() if case in sim}
    if band:
        summary["sim_band"] = {
            case: {p: {"mean_tct": tcts, "error": [
                (t - cases[case][p]["mean_tct"]) / cases[case][p]["mean_tct"] for t in tcts]}
                for p, tcts in rows.items() if p in cases.get(case, {})}
            for case, rows in band.items()}
    if clusters:
        summary["sim_clusters"] = list(clusters)
    if calibration is not None:
        spread = probe_spread(calibration)
        summary["calibration"] = {**calibration, "spread": spread} if spread else calibration
    return summary


def paired_tcts(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per case and policy, the TCT of each (repetition, session) cell, keyed
    "repetition:session": the cells the speedups pair."""
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        bucket = paired.setdefault(run["case"], {}).setdefault(run["policy"], {})
        for wf, t in run["tct"].items():
            bucket[f"{run['repetition']}:{wf}"] = t
    return paired


def speedups(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``speedup`` (memory case) and ``speedup_light``: per ``saga/POLICY``, saga's paired
    geomean over the policy (saga.metrics.summary.speedup), ``mean_tct_ratio`` (the
    policy's mean TCT over saga's, each the mean of its runs' means) and that ratio's
    intervals (:func:`mean_tct_intervals`), from one engine's runs alone: what
    saga.bench.real_rebuild recomputes from a recorded runs.jsonl."""
    from saga.metrics.summary import speedup

    paired = paired_tcts(runs)
    run_means: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        run_means.setdefault((run["case"], run["policy"]), []).append(
            _mean(list(run["tct"].values())))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for case, key in (("memory", "speedup"), ("light", "speedup_light")):
        base = paired.get(case, {}).get("saga")
        if base is None:
            continue
        out[key] = {}
        for policy, tcts in paired[case].items():
            if policy == "saga":
                continue
            figures = speedup(tcts, base)
            figures["mean_tct_ratio"] = _mean(run_means[case, policy]) / _mean(
                run_means[case, "saga"])
            figures |= mean_tct_intervals(tcts, base)
            out[key][f"saga/{policy}"] = figures
    return out


def mean_tct_intervals(base: dict[str, float], saga: dict[str, float]) -> dict[str, float]:
    """The 95 % intervals of the headline ``mean_tct_ratio`` (saga.metrics.mean_ratio, the
    same resample count and seed as the geomean's): ``mean_ci_*`` over the (repetition,
    session) cells, ``mean_session_ci_*`` over the ``sessions``, each session's cells of every
    repetition drawn together (docs/engines.md, "The interval of the mean-TCT ratio")."""
    from saga.metrics.mean_ratio import mean_ratio_interval

    # the cells' keys are "repetition:session" (summarize)
    r = mean_ratio_interval(base, saga, block=lambda key: key.split(":", 1)[1])
    return {"mean_ci_low": r["mean_ci_low"], "mean_ci_high": r["mean_ci_high"],
            "mean_session_ci_low": r["mean_block_ci_low"],
            "mean_session_ci_high": r["mean_block_ci_high"], "sessions": int(r["blocks"])}


def ranking(real: dict[str, float], sim: dict[str, float]) -> dict[str, Any]:
    """The policies fastest first by real and by simulated mean TCT, and whether the
    simulator orders them as the real runs do."""
    policies = [p for p in real if p in sim]
    by_real = sorted(policies, key=lambda p: real[p])
    by_sim = sorted(policies, key=lambda p: sim[p])
    return {"real": by_real, "sim": by_sim, "same": by_real == by_sim}


def _load_stats(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    samples = [x for run in runs for x in run["load"]]
    if not samples:
        return {}
    return {"min": min(samples), "mean": _mean(samples), "max": max(samples)}


def render_markdown(summary: dict[str, Any]) -> str:
    """The "Real engines" section of RESULTS.md, from a summary.json of `saga bench real`:
    vLLM's figures, then llama.cpp's when they are there."""
    text = "## Real engines\n\n" if "cases" not in summary else _render_engine(summary)
    if LLAMA_KEY in summary:
        from saga.bench.real_llama import intro

        llama = summary[LLAMA_KEY]
        text += "\n".join(intro(llama) + _tables(llama)) + "\n"
    return text


def repetitions_text(settings: dict[str, Any]) -> str:
    """"3 interleaved repetition(s)", with the cases that repeat otherwise: "..., the light
    case 6" (``settings``: a summary's, :class:`RealBench` as JSON)."""
    text = f"{settings['repetitions']} interleaved repetition(s)"
    own = [f"the {c['name']} case {c['repetitions']}" for c in settings.get("cases", ())
           if c.get("repetitions") not in (None, settings["repetitions"])]
    return ", ".join([text, *own])


def _render_engine(summary: dict[str, Any]) -> str:
    """The vLLM part: what ran, then the tables."""
    s = summary["settings"]
    load = summary.get("load_average", {})
    both = LLAMA_KEY in summary
    total = summary.get("total_wall_seconds")
    lines = [
        "## Real engines",
        "",
        f"`saga bench real{' --quick' if summary.get('quick') else ''}"
        f"{'' if both else ' --engine vllm'}`: 2 vLLM-CPU replicas "
        f"(one core each, tiny-llama, {s['kv_blocks'] - 1} usable KV blocks of "
        f"{s['block_tokens']} tokens per replica), {repetitions_text(s)}, LMCache agent "
        "sessions (real text). saga = SAGA's gateway + "
        "SagaScheduler inside vLLM; the others = their gateway policy over stock vLLM. "
        f"Wall time {summary['wall_seconds'] / 60:.1f} min; load average (1 min) during the "
        f"runs {load.get('min', math.nan):.1f}-{load.get('max', math.nan):.1f} "
        f"(mean {load.get('mean', math.nan):.1f}; the four replicas' own threads count in "
        "it).",
        "",
    ]
    if both and total is not None:
        lines += [f"The whole benchmark, vLLM then llama.cpp, took {total / 60:.1f} min from "
                  "start to end (engine starts, calibration probes and the simulator "
                  "included).", ""]
    return "\n".join(lines + _tables(summary)) + "\n"


def _tables(summary: dict[str, Any]) -> list[str]:
    """Per case a table of the policies, then SAGA's speedups (one engine's summary)."""
    s = summary["settings"]
    lines: list[str] = []
    for case, rows in summary["cases"].items():
        c: dict[str, Any] = next((x for x in s["cases"] if x["name"] == case), {})
        lines += [
            f"**{case}** ({c.get('sessions')} sessions x up to {c.get('calls')} calls, "
            f"arriving {c.get('arrival_interval')} s apart)",
            "",
            "| policy | mean TCT s | runs | /saga | hit rate | failed sessions | "
            "held at the door (sessions, mean s) | retention (pin/release/drop) | sim TCT s |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        base = rows.get("saga", {}).get("mean_tct", math.nan)
        for policy, e in rows.items():
            r = e["retentions"]
            sim = summary.get("sim_mean_tct", {}).get(case, {}).get(policy, math.nan)
            per_run = " ".join(f"{x['mean_tct']:.1f}" for x in e["runs"])
            lines.append(
                f"| {policy} | {e['mean_tct']:.2f} | {per_run} | {e['mean_tct'] / base:.2f} | "
                f"{e['hit_rate']:.1%} | {e['failed']} | {_held(e)} | {r.get('pin', 0)}/"
                f"{r.get('release', 0)}/{r.get('drop', 0)} | "
                f"{'-' if math.isnan(sim) else f'{sim:.2f}'} |")
        lines.append("")
        note = _ratio_note(summary.get({"memory": "speedup", "light": "speedup_light"}.get(
            case, ""), {}))
        if note:
            lines += [note, ""]
        slots = [f"{p} {e['slot_actions'].get('save', 0)}/{e['slot_actions'].get('restore', 0)}"
                 f"/{e['slot_actions'].get('erase', 0)}"
                 for p, e in rows.items() if "slot_actions" in e]
        if slots:  # llama.cpp
            lines += ["Slot actions (save/restore/erase): " + ", ".join(slots) + ".", ""]
    stalled = [f"{case} {p} rep {r['repetition']} {r.get('stall', 0.0):.2f} s / "
               f"{r.get('gateway_stall', 0.0):.2f} s"
               for case, rows in summary["cases"].items() for p, e in rows.items()
               for r in e["runs"] if r.get("stall", 0.0) > 0 or r.get("gateway_stall", 0.0) > 0]
    if stalled:
        lines += ["Stalls (the client's / the gateway's event loop woke late by this much at "
                  "worst; that run's sends and answers are late by as much): "
                  + ", ".join(stalled) + ".", ""]
    for key, label in (("speedup", "memory-bound"), ("speedup_light", "light")):
        if key in summary:
            parts = [f"{name.split('/', 1)[1]} {f['mean_tct_ratio']:.2f}x mean TCT "
                     f"({_mean_intervals(f)}geomean {f['geomean']:.2f}, 95 % CI "
                     f"{f['ci_low']:.2f}-{f['ci_high']:.2f})"
                     for name, f in summary[key].items()]
            lines.append(f"SAGA's speedup, {label}: " + "; ".join(parts) + ".")
    if "sim_error" in summary:
        lines.append("")
        clusters = summary.get("sim_clusters", ())
        slowed = (", each step slowed while the other replica is busy by the contention "
                  "the probe measured" if any("-hc" in c for c in clusters) else
                  ", each step slowed while the other replica is busy by cpu-tiny's host "
                  f"contention, {_preset_contention():g}")
        around = summary.get("calibration", {}).get("bracketed", False)
        speed = (("each repetition at the engines' speed alone midway between the "
                  "calibration probes before and after it" if around else
                  "each repetition at the engines' speed alone its calibration probe "
                  "measured") + slowed if any("-fit" in c for c in clusters)
                 else "the fixed preset")
        errors = [f"{label} case: " + ", ".join(f"{p} {e:+.0%}" for p, e in
                                                summary[key].items())
                  for key, label in (("sim_error", "memory-bound"), ("sim_error_light", "light"))
                  if summary.get(key)]
        lines.append(f"Simulator (cpu-tiny, same KV, {speed}) error of mean TCT, "
                     + "; ".join(errors) + ".")
        if "sim_band" in summary:
            spread = summary.get("calibration", {}).get("spread", {})
            moved = (f" (alone, the slowest probe's decode took x{spread['decode']:.2f} the "
                     f"fastest's time, its prefill x{spread['prefill']:.2f})" if spread else "")
            spans = [f"{label} case: " + ", ".join(
                f"{p} {b['error'][0]:+.0%} to {b['error'][1]:+.0%}"
                for p, b in summary["sim_band"][case].items())
                for case, label in (("memory", "memory-bound"), ("light", "light"))
                if summary["sim_band"].get(case)]
            lines.append("At each probe's speed in turn" + moved + ", the simulator's error "
                         "spans " + "; ".join(spans) + ": what the engines' drift alone "
                         "moves it by.")
        for case, r in summary.get("sim_ranking", {}).items():
            lines.append(f"Ranking, {case}: real {' < '.join(r['real'])}; simulated "
                         f"{' < '.join(r['sim'])} ({'same' if r['same'] else 'differs'})"
                         + _separated_line(r) + ".")
    calibration = summary.get("calibration", {})
    probes = [p for p in calibration.get("repetitions", []) if "preset" in p]
    if probes:
        d = calibration.get("drift", {})
        moved = (f"; by the end the engines took x{d['solo_prefill']:.2f} (prefill) and "
                 f"x{d['solo_decode']:.2f} (decode) of the first probe's time alone, "
                 f"x{d['together_prefill']:.2f} and x{d['together_decode']:.2f} together"
                 if d else "")
        simulated = any("-fit" in c for c in summary.get("sim_clusters", ()))
        scales = ", ".join(
            f"x{p['solo']['prefill_scale']:.2f}/{p['solo']['decode_scale']:.2f} alone and "
            f"x{p['together']['prefill_scale']:.2f}/{p['together']['decode_scale']:.2f} "
            "together" + (f" (the probe's host contention {p['contention']:.2f})"
                          if simulated and "contention" in p else "")
            for p in probes)
        lines.append("")
        lines.append(
            f"Calibration probes ({calibration['probe_seconds']:.0f} s, {len(probes)} before "
            f"the runs): the engines' prefill/decode time over cpu-tiny's {scales}{moved}.")
    saga = summary["cases"].get("memory", {}).get("saga", {})
    if saga.get("lookups"):
        lines.append("")
        lines.append(
            f"KV events against the gateway's estimate (saga, memory-bound): "
            f"{saga['lookups']} prefix lookups; the estimate said {saga['estimate_blocks']} "
            f"blocks cached, the engines' events {saga['event_blocks']} "
            f"({1 - saga['event_blocks'] / max(saga['estimate_blocks'], 1):.0%} fewer).")
    return lines


def _mean_intervals(f: dict[str, Any]) -> str:
    """The mean-TCT ratio's two 95 % intervals, as the speedup lines open with them; empty
    for a summary written before they were (its geomean alone)."""
    if "mean_ci_low" not in f:
        return ""
    return (f"95 % CI {f['mean_ci_low']:.2f}-{f['mean_ci_high']:.2f} over (repetition, "
            f"session) cells, {f['mean_session_ci_low']:.2f}-{f['mean_session_ci_high']:.2f} "
            f"over the {f['sessions']} sessions; paired ")


def _ratio_note(figures: dict[str, Any]) -> str:
    """Under a case's table: what /saga is and its intervals (docs/engines.md, "The
    interval of the mean-TCT ratio"); empty without them."""
    parts = [f"{name.split('/', 1)[1]} {f['mean_ci_low']:.2f}-{f['mean_ci_high']:.2f} / "
             f"{f['mean_session_ci_low']:.2f}-{f['mean_session_ci_high']:.2f}"
             for name, f in figures.items() if "mean_ci_low" in f]
    if not parts:
        return ""
    return ("/saga: the policy's mean TCT over saga's; its 95 % bootstrap interval over "
            "(repetition, session) cells / over sessions (each session's repetitions drawn "
            "together): " + ", ".join(parts) + ".")


def _preset_contention() -> float:
    from saga.engine.cluster import get_cluster

    return get_cluster("cpu-tiny").host_contention


def _separated_line(r: dict[str, Any]) -> str:
    """The pairs the real runs separate (paired 95 % CI excluding 1) and the simulator's
    agreement on them; the ties (saga.bench.real_ranking)."""
    if "separated" not in r:
        return ""
    sep = r["separated"]
    pairs = ", ".join(
        f"{s['faster']} < {s['slower']} ({s['geomean']:.2f}, {s['ci_low']:.2f}-"
        f"{s['ci_high']:.2f}{'' if s['sim_agrees'] else ', simulator ' + s['sim_order']})"
        for s in sep)
    agree = sum(s["sim_agrees"] for s in sep)
    ties = "; ".join(" = ".join(t) for t in r["ties"])
    return (f"; over the {len(sep)} pair(s) the real runs separate the simulator agrees on "
            f"{agree}" + (f": {pairs}" if sep else "")
            + (f"; ties in the real runs: {ties}" if ties else ""))


def _held(entry: dict[str, Any]) -> str:
    n = entry.get("deferred", 0)
    return f"{n}, {entry['deferred_seconds'] / n:.1f}" if n else "0"


def main(
    out: Path, quick: bool, results: Path | None = None, engine: str = "both",
    cases: Sequence[str] = (), repetitions: int | None = None,
    policies: Sequence[str] = (),
) -> int:
    if results is not None and (cases or policies):
        raise UserError("--results takes the whole real benchmark (every case and policy), "
                        "not --case or --policies")
    if repetitions is not None and repetitions < 1:
        raise UserError(f"--repetitions must be at least 1, not {repetitions}")
    # an unknown case or policy is an error before any engine starts
    RealBench().only(cases, policies=policies)
    summary = run_real(out, quick=quick, engine=engine, cases=cases,
                       repetitions=repetitions, policies=policies)
    print(render_markdown(summary))
    print(f"wrote {out / 'summary.json'} and {out / 'real.md'}")
    if results is not None:
        put_real_section(results, summary)
        print(f"wrote the 'Real engines' section of {results}")
    return 0


def put_real_section(results: Path, summary: dict[str, Any]) -> None:
    """Put the "Real engines" section into ``results`` (RESULTS.md) as a kept section, in
    place if it is there: `saga bench all --results` carries it over when it regenerates
    the simulator's sections (saga.bench.sections)."""
    from saga.bench.sections import put_section

    text = results.read_text() if results.exists() else "# Results\n"
    results.write_text(put_section(text, "real", render_markdown(summary)))
