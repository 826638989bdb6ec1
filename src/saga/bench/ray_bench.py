"""``saga bench ray``: SAGA as Ray Serve's request router, measured live.

The same agent trace (LMCache's mini-SWE-agent sessions: real prompt text) is replayed,
one client per session, through five routers in front of the same emulator replicas
(the engine model of a cluster preset in real time, so the same cores do the same work):

* ``saga-gateway``: SAGA's own gateway (:mod:`saga.gateway`) in front of emulator
  servers, policy ``saga``;
* ``saga-ray``: Ray Serve, :class:`~saga.integrations.ray.router.SagaRequestRouter`;
* ``saga-ray-spread``: the same, but Serve's proxy spreads a workflow's calls over the
  two router replicas (no ingress affinity), so they agree through the shared state alone
  (``cross_router_*``: the workflows served by both, and how many kept one replica);
* ``ray-pow2``, ``ray-consistent-hash``, ``ray-prefix-affinity``: Ray Serve with its own
  routers (timed subclasses, :mod:`saga.integrations.ray.timed`).

Each Ray run is a fresh application (two ingress replicas, so two router replicas, and
fresh emulator replicas). Reported per router: mean and p99 task completion time (TCT:
a workflow's arrival to its last answer), the prefix hit rate (cached over prompt tokens,
from the answers' usage), routing decision overhead (median, p99, per request), affinity
(workflows whose calls all went to one replica) and errors. ``speedup["saga/NAME"]`` is
NAME's mean TCT over saga-ray's. With ``faults``, saga-ray runs again while one router
replica is killed (a third of the way in) and the state actor is killed (two thirds):
what the clients saw is reported under ``faults``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from saga.errors import UserError
from saga.integrations.ports import free_ports
from saga.integrations.replay import ReplayWorkflow, load_sessions, plan

ROUTER_NAMES = ("saga-gateway", "saga-ray", "saga-ray-spread", "ray-pow2",
                "ray-consistent-hash", "ray-prefix-affinity")
#: saga-ray with calls spread over the router replicas (no ingress affinity): the routers
#: agree through the shared state alone.
SPREAD = "saga-ray-spread"
Progress = Callable[[str], None]


class RayBench(BaseModel):
    """The scenario (src/saga/scenarios/live/ray.toml)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "ray"
    trace: str = "lmcache_agent/miniswe.jsonl.gz"
    sessions: int = Field(20, ge=1)
    calls: int = Field(8, ge=1)
    max_prompt_chars: int = Field(60_000, ge=100)
    arrival_interval: float = Field(0.1, ge=0)
    time_compress: float = Field(4.0, gt=0)
    max_gap: float = Field(1.5, ge=0)
    max_tokens: int = Field(64, ge=1)
    cluster: str = "test-2"
    replicas: int = Field(2, ge=1)
    routers: int = Field(2, ge=1)
    time_scale: float = Field(1.0, gt=0)
    policy: str = "saga"
    faults: bool = True
    run: list[str] = Field(default_factory=lambda: list(ROUTER_NAMES))
    quick: dict[str, Any] = Field(default_factory=dict)

    def quick_version(self) -> RayBench:
        return self.model_validate({**self.model_dump(exclude={"quick"}), **self.quick})


def load_bench(path: str | None = None) -> RayBench:
    import tomllib

    if path is None:
        text = (resources.files("saga") / "scenarios" / "live" / "ray.toml").read_text()
    else:
        text = Path(path).read_text()
    return RayBench.model_validate(tomllib.loads(text))


# ---- the client: one per session, every answer recorded ---------------------------------
@dataclass
class CallRecord:
    workflow: str
    status: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    replica: str = ""
    router: str = ""


@dataclass
class LiveRun:
    tct: dict[str, float] = field(default_factory=dict)
    calls: list[CallRecord] = field(default_factory=list)

    def summary(self, overhead_ms: Sequence[float]) -> dict[str, Any]:
        tcts = sorted(self.tct.values())
        ok = [c for c in self.calls if c.status == 200]
        prompt = sum(c.prompt_tokens for c in ok)
        by_workflow: dict[str, list[str]] = {}
        routers_of: dict[str, set[str]] = {}
        for c in ok:
            by_workflow.setdefault(c.workflow, []).append(c.replica)
            if c.router:
                routers_of.setdefault(c.workflow, set()).add(c.router)
        crossed = [w for w, rs in routers_of.items() if len(rs) > 1]
        held = [w for w, rs in by_workflow.items() if len(set(rs)) == 1]
        moves = sum(sum(1 for a, b in itertools.pairwise(rs) if a != b)
                    for rs in by_workflow.values())
        routers = {c.router for c in ok if c.router}
        return {
            "workflows": len(tcts), "calls": len(self.calls),
            "errors": len(self.calls) - len(ok),
            "mean_tct": statistics.fmean(tcts) if tcts else math.nan,
            "p99_tct": _quantile(tcts, 0.99),
            "prefix_hit_rate": sum(c.cached_tokens for c in ok) / prompt if prompt else 0.0,
            "affinity": len(held) / len(by_workflow) if by_workflow else 0.0,
            "replica_moves": moves,
            "router_replicas_used": len(routers),
            "cross_router_workflows": len(crossed),
            "cross_router_affinity": (sum(1 for w in crossed if len(set(by_workflow[w])) == 1)
                                      / len(crossed)) if crossed else math.nan,
            "route_overhead_ms": {
                "median": statistics.median(overhead_ms) if overhead_ms else math.nan,
                "p99": _quantile(sorted(overhead_ms), 0.99),
                "samples": len(overhead_ms),
            },
        }


def _quantile(data: Sequence[float], q: float) -> float:
    if not data:
        return math.nan
    return data[min(len(data) - 1, int(q * len(data)))]


async def replay_live(
    url: str, workflows: Sequence[ReplayWorkflow], *, salt: str,
    events: Sequence[tuple[float, Callable[[], None]]] = (), timeout: float = 600.0,
) -> LiveRun:
    """Each workflow's calls in order through ``url`` (the trace's gaps between them);
    ``events``: (seconds after the start, action) run meanwhile (fault injection)."""
    run = LiveRun()
    start = time.monotonic() + 0.2
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:

        async def one(wf: ReplayWorkflow) -> None:
            await asyncio.sleep(max(0.0, start + wf.arrival - time.monotonic()))
            arrived = time.monotonic()
            for i, call in enumerate(wf.calls):
                await asyncio.sleep(call.gap)
                headers = {"x-saga-workflow": wf.id, "x-saga-agent": "swe-agent",
                           "x-saga-end": "true" if i == len(wf.calls) - 1 else "false"}
                if i:
                    headers["x-saga-tool"] = "tool"
                body = {"model": "m", "max_tokens": call.max_tokens,
                        "messages": [{"role": "user", "content": salt + call.text}]}
                record = CallRecord(wf.id, 0)
                try:
                    async with http.post(url + "/v1/chat/completions", json=body,
                                         headers=headers) as response:
                        raw = await response.read()
                        record.status = response.status
                        record.replica = response.headers.get(
                            "x-saga-replica", response.headers.get("x-saga-backend", ""))
                        record.router = response.headers.get("x-saga-router", "")
                except (aiohttp.ClientError, TimeoutError):
                    raw = b""
                if record.status == 200:
                    usage = json.loads(raw).get("usage") or {}
                    record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    record.cached_tokens = int(details.get("cached_tokens") or 0)
                run.calls.append(record)
            run.tct[wf.id] = time.monotonic() - arrived

        async def at(delay: float, action: Callable[[], None]) -> None:
            await asyncio.sleep(max(0.0, start + delay - time.monotonic()))
            await asyncio.to_thread(action)

        await asyncio.gather(*(one(w) for w in workflows), *(at(d, a) for d, a in events))
    return run


# ---- saga-gateway: emulator servers and the gateway in this process ---------------------
class EmulatorThread:
    """``replicas`` emulator replicas served from a thread (the gateway's backends)."""

    def __init__(self, cluster: str, replicas: int, time_scale: float) -> None:
        from saga.emulator.engine import Emulator
        from saga.engine.cluster import get_cluster

        self.emulator = Emulator(get_cluster(cluster), replicas, time_scale=time_scale)
        self.port = free_ports(replicas)
        self.urls = [f"http://127.0.0.1:{self.port + i}" for i in range(replicas)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> EmulatorThread:
        from saga.emulator.server import serve

        self._thread.start()
        ready = asyncio.Event()

        async def main() -> None:
            await serve(self.emulator, "127.0.0.1", self.port, ready)

        async def started() -> None:
            await ready.wait()

        self._server = asyncio.run_coroutine_threadsafe(main(), self._loop)
        asyncio.run_coroutine_threadsafe(started(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:  # the server's tasks end (cancelled) before the loop
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def run_gateway(bench: RayBench, workflows: Sequence[ReplayWorkflow], salt: str) -> dict[str, Any]:
    from saga.gateway.config import GatewayConfig
    from saga.integrations.replay import GatewayThread

    with EmulatorThread(bench.cluster, bench.replicas, bench.time_scale) as emulators:
        config = GatewayConfig.model_validate({
            "policy": bench.policy, "cluster": bench.cluster,
            "backends": [{"url": u, "kind": "emulator"} for u in emulators.urls],
            "request_timeout": 600.0,
        })
        with GatewayThread(config) as gw:
            run = asyncio.run(replay_live(gw.url, workflows, salt=salt))
            latency = gw.gateway.metrics.decision_latency
            samples = [s * 1000.0 for s in getattr(latency, "_recent", [])]
    return run.summary(samples)


# ---- Ray Serve ------------------------------------------------------------------------
class RayCluster:
    """A local Ray instance with Serve's HTTP proxy and the shared state actor."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.port = free_ports()

    def __enter__(self) -> RayCluster:
        import ray

        from saga.integrations.ray.app import runtime_env
        from saga.integrations.ray.router import STATE_NAMESPACE, state_actor
        from saga.integrations.ray.serve_ready import start_serve

        ray.init(num_cpus=self.num_cpus, runtime_env=runtime_env(), namespace=STATE_NAMESPACE,
                 include_dashboard=False, log_to_driver=False)
        start_serve({"host": "127.0.0.1", "port": self.port})
        ray.get(state_actor().ping.remote())
        return self

    def __exit__(self, *exc: object) -> None:
        import ray
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()

    @staticmethod
    def state() -> Any:
        import ray

        from saga.integrations.ray.router import STATE_ACTOR, STATE_NAMESPACE

        return ray.get_actor(STATE_ACTOR, namespace=STATE_NAMESPACE)

    def run(self, bench: RayBench, router: str, workflows: Sequence[ReplayWorkflow],
            salt: str, *, faults: bool = False) -> dict[str, Any]:
        import ray
        from ray import serve

        from saga.integrations.ray.app import build_app
        from saga.integrations.ray.config import RayAppConfig
        from saga.integrations.ray.serve_ready import run_app

        name = f"bench-{router}{'-faults' if faults else ''}"
        config = RayAppConfig(
            name=name, route_prefix=f"/{name}", ingress_affinity=router != SPREAD,
            router="saga-ray" if router == SPREAD else router, policy=bench.policy,
            routers=bench.routers, replicas=bench.replicas, cluster=bench.cluster,
            time_scale=bench.time_scale, stats_period=0.2,
        )
        run_app(build_app(config), name=name, route_prefix=config.route_prefix,
                url=f"http://127.0.0.1:{self.port}")
        ray.get(self.state().reset_overhead.remote())
        events: list[tuple[float, Callable[[], None]]] = []
        span = max(w.arrival for w in workflows) + 2.0
        if faults:
            events = [(span / 3, lambda: _kill_ingress_replica(name)),
                      (2 * span / 3, lambda: ray.kill(self.state(), no_restart=False))]
        url = f"http://127.0.0.1:{self.port}/{name}"
        run = asyncio.run(replay_live(url, workflows, salt=salt, events=events))
        overhead = _state_overhead(self.state())
        serve.delete(name)
        result = run.summary(overhead)
        if faults:
            result["killed"] = {"router_replica_at_s": span / 3, "state_actor_at_s": 2 * span / 3}
        return result


def _state_overhead(actor: Any) -> list[float]:
    import ray

    for _ in range(3):  # the actor may be restarting after the fault run
        try:
            summary = ray.get(actor.summary.remote(), timeout=30)
            return [x for samples in summary["overhead_ms"].values() for x in samples]
        except Exception:
            time.sleep(1.0)
    return []


def _kill_ingress_replica(app: str) -> None:
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"{app}#SagaIngress#" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]),
                     no_restart=True)
            return


# ---- the scenario -----------------------------------------------------------------------
def run_ray_bench(bench: RayBench, *, quick: bool, progress: Progress = print) -> dict[str, Any]:
    from saga.workloads.paths import default_trace

    spec = bench.quick_version() if quick else bench
    unknown = [r for r in spec.run if r not in ROUTER_NAMES]
    if unknown:
        raise UserError(f"unknown routers {unknown}; choose from {', '.join(ROUTER_NAMES)}")
    trace = default_trace(spec.trace)
    sessions = load_sessions(trace, sessions=spec.sessions, calls=spec.calls,
                             max_prompt_chars=spec.max_prompt_chars)
    workflows = plan(sessions, max_tokens=spec.max_tokens, time_compress=spec.time_compress,
                     max_gap=spec.max_gap, arrival_interval=spec.arrival_interval)
    nonce = f"{time.time_ns():x}"
    policies: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    if "saga-gateway" in spec.run:
        progress("saga-gateway ...")
        policies["saga-gateway"] = run_gateway(spec, workflows, f"[{nonce} gateway]\n")
    faults: dict[str, Any] | None = None
    ray_routers = [r for r in spec.run if r != "saga-gateway"]
    if ray_routers:
        with RayCluster() as cluster:
            for router in ray_routers:
                progress(f"{router} ...")
                policies[router] = cluster.run(spec, router, workflows, f"[{nonce} {router}]\n")
            if spec.faults and "saga-ray" in ray_routers:
                progress("saga-ray with a router replica and the state actor killed ...")
                faults = cluster.run(spec, "saga-ray", workflows, f"[{nonce} faults]\n",
                                     faults=True)
    base = policies.get("saga-ray", {}).get("mean_tct")
    summary: dict[str, Any] = {
        "scenario": spec.name, "quick": quick, "live": True,
        "setup": spec.model_dump(exclude={"quick"}) | {"trace_path": str(trace)},
        "policies": policies,
        "speedup": {f"saga/{name}": result["mean_tct"] / base
                    for name, result in policies.items() if base and name != "saga-ray"},
        "route_overhead_ms": {name: result["route_overhead_ms"]["median"]
                              for name, result in policies.items()},
        "faults": faults,
        "wall_seconds": time.monotonic() - started,
    }
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"saga bench {summary['scenario']}"
                  f"{' --quick' if summary['quick'] else ''}")
    for column in ("router", "mean TCT s", "p99 TCT s", "prefix hit", "affinity",
                   "route ms (median)", "kept home across routers", "errors", "saga speedup"):
        table.add_column(column)
    rows = dict(summary["policies"])
    if summary.get("faults"):
        rows["saga-ray (faults)"] = summary["faults"]
    for name, r in rows.items():
        speedup = summary["speedup"].get(f"saga/{name}")
        table.add_row(name, f"{r['mean_tct']:.2f}", f"{r['p99_tct']:.2f}",
                      f"{r['prefix_hit_rate']:.1%}", f"{r['affinity']:.0%}",
                      f"{r['route_overhead_ms']['median']:.3f}", _crossed(r), str(r["errors"]),
                      f"{speedup:.2f}x" if speedup else "")
    Console(width=140).print(table)


def _crossed(result: dict[str, Any]) -> str:
    crossed = result.get("cross_router_workflows", 0)
    if not crossed:
        return ""
    return f"{round(result['cross_router_affinity'] * crossed)}/{crossed}"


def run_cli(scenario: str, quick: bool, out: Path) -> int:
    """``saga bench ray`` (or a live scenario file)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("saga bench ray needs Ray: pip install -e '.[ray]'") from None
    bench = load_bench(None if scenario == "ray" else scenario)
    summary = run_ray_bench(bench, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    print(f"wrote {out / 'summary.json'}")
    return 0
