"""Regenerate docs/RELIABILITY.md: every fault and bad input tried, how many, the outcome.

    python scripts/reliability.py            # about a minute; real processes on 127.0.0.1
    python scripts/reliability.py --quick    # smaller counts
    python scripts/reliability.py --soak soak.json   # with a scripts/soak.py --json report

The scenarios are those of tests/reliability (run larger here); the simulator rows run
every policy under the same replica failures. Exits 1 if any row does not hold.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

import scenarios as sc  # noqa: E402


def simulator_rows() -> list[sc.Outcome]:
    from saga.engine.cluster import get_cluster
    from saga.sched.registry import build_policy, list_policies
    from saga.sim.faults import Fault
    from saga.sim.simulator import Simulation

    sys.path.insert(0, str(ROOT / "tests" / "sim"))
    from test_faults import _workflows

    faults = [Fault(replica=0, at=2.0, duration=3.0), Fault(replica=1, at=3.0, duration=4.0),
              Fault(replica=2, at=9.0, duration=1.0)]
    cluster = get_cluster("test-2").model_copy(update={"replicas": 3})
    rows = []
    for name in list_policies():
        wfs = _workflows()
        sim = Simulation(cluster, build_policy(name), wfs, seed=3, faults=faults)
        calm = Simulation(cluster, build_policy(name), wfs, seed=3).run()
        result = sim.run()
        done = [w for w in result.workflows if w.finished_at >= 0]
        leaks = sum(r.kv.locked_blocks + r.kv.anonymous_blocks + len(r.running) + len(r.waiting)
                    for r in sim.replicas)
        calls = len(result.calls)
        expected = sum(len(w.calls) for w in wfs if not any(
            r.workflow == w.id and r.rejected for r in result.workflows))
        recompute = sum(c.recomputed_tokens for c in result.calls) - sum(
            c.recomputed_tokens for c in calm.calls)
        rows.append(sc.Outcome(
            "simulator", f"{name}: 3 outages on 3 replicas (two overlapping)", len(wfs),
            f"{len(done)}/{len(wfs)} workflows done, {calls}/{expected} calls once each, "
            f"+{recompute} recomputed tokens, leaked blocks/calls {leaks}",
            len(done) == len(wfs) and calls == expected and leaks == 0))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    parser.add_argument("--soak", type=Path, action="append", default=[],
                        help="a scripts/soak.py --json report, for the soak rows (repeat "
                        "for several runs)")
    args = parser.parse_args()
    q = args.quick
    rows: list[sc.Outcome] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        steps = [
            lambda: sc.replica_killed(tmp, workflows=4 if q else 8, calls=3 if q else 5),
            lambda: sc.backend_errors(tmp, calls=8 if q else 20),
            lambda: sc.client_disconnects(tmp),
            lambda: sc.gateway_restart_with_redis(tmp, workflows=4 if q else 10),
            lambda: sc.bad_inputs(tmp),
            lambda: sc.bad_traces(tmp),
            lambda: [sc.fuzz(tmp, examples=15 if q else 100)],
            lambda: [sc.flood(tmp, total=1500 if q else 5000, clients=150 if q else 300)],
            lambda: sc.tenant_isolation(tmp),
            lambda: sc.agents_without_headers(tmp),
            lambda: [sc.tenant_graphs(tmp, flood=5 if q else 20)],
            lambda: [sc.closed_by_default(tmp)],
            lambda: [sc.retry_elsewhere(tmp, calls=5 if q else 20)],
            lambda: sc.redis_faults(tmp, calls=10 if q else 40),
            lambda: [sc.store_bound(tmp, workflows=30 if q else 100, limit=10 if q else 25)],
            lambda: [sc.agent_names_bound(tmp, names=20 if q else 40, limit=8)],
            lambda: [sc.slot_files(tmp, workflows=15 if q else 40, budget_files=4)],
            simulator_rows,
        ]
        for report in args.soak:
            steps.append(lambda r=report: sc.soak_rows(json.loads(r.read_text())))
        for step in steps:
            try:
                got = step()
            except Exception as error:  # a scenario that cannot run is a failed row
                got = [sc.Outcome("error", getattr(step, "__name__", "scenario"), 0,
                                  f"{type(error).__name__}: {error}", False)]
            rows.extend(got)
            for r in got:
                print(f"{'ok  ' if r.ok else 'FAIL'} {r.area:10} {r.what}: {r.result}",
                      flush=True)
    args.out.write_text(render(rows, q))
    print(f"wrote {args.out}")
    return 0 if all(r.ok for r in rows) else 1


def render(rows: list[sc.Outcome], quick: bool) -> str:
    import schemathesis

    held = sum(r.ok for r in rows)
    lines = [
        "# Reliability",
        "",
        "Generated by `python scripts/reliability.py`"
        + (" --quick" if quick else "") + " (do not edit by hand). Real emulator, gateway, "
        "Redis and fake-backend processes on 127.0.0.1; the scenarios are in "
        "`tests/reliability/scenarios.py` (the tests run them smaller).",
        "",
        f"Python {platform.python_version()}, schemathesis {schemathesis.__version__}. "
        f"**{held}/{len(rows)} rows hold.**",
        "",
        "| area | tried | n | outcome | holds |",
        "| --- | --- | ---: | --- | :---: |",
    ]
    for r in rows:
        result = r.result.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.area} | {r.what} | {r.tried} | {result} | "
                     f"{'yes' if r.ok else '**NO**'} |")
    lines += ["", "## What each area means", "",
              "* **faults**: a replica that dies is marked down (failed call or health "
              "check), its calls are retried on the replica the policy picks (affinity "
              "moves with them), and it rejoins when its health check passes; 5xx, "
              "unreachable and timed-out backends get at most `retries` extra attempts "
              "within `retry_budget` (a token bucket: 10 + ratio x calls); a client that "
              "leaves closes the backend connection and the emulator aborts the call. "
              "A stream that already started cannot move: it ends with an `error` event.",
              "* **bad input**: every malformed request is a 4xx with an OpenAI error body "
              "naming the problem; the fuzz sends schema-valid and schema-violating cases "
              "for every operation of `/openapi.json`.",
              "* **overload**: `max_pending`, `max_queue` (per backend), `max_workflows`, "
              "the memory store's `max_sessions` and the emulator's `--max-queue` bound "
              "every queue; beyond, a 429 with `Retry-After`.",
              "* **tenants**: workflow ids are scoped by tenant; client priority hints are "
              "dropped; `/metrics` and `/saga/*` need an `admin_keys` key unless "
              "`public_metrics` (closed by default); learned graphs, gate accounting and "
              "call statistics are per tenant; keys are compared "
              "as SHA-256 digests with `hmac.compare_digest` over all keys and never "
              "logged.",
              "* **clients**: recorded request shapes of Claude Code, Codex, OpenCode and an "
              "OpenAI-SDK agent (tests/gateway/fixtures/agent_sessions.json) with no SAGA "
              "header are one workflow per session, of the right agent, with tool "
              "boundaries from the messages (`saga.gateway.identity`).",
              "* **leaks**: Redis commands time out and reconnect, and the call path serves "
              "without the store while it is away; sessions are bounded by "
              "`store.max_sessions` as well as TTL (oldest evicted, counted); each "
              "tenant's agent names by `max_agents_per_tenant` (later new names share "
              "its catch-all agent `(other)`, counted in "
              "`saga_agent_names_folded_total`); llama.cpp "
              "slot files are deleted on drop, at the workflow's end, by a start-up sweep "
              "and beyond `slot_save_budget`.",
              "* **soak**: `scripts/soak.py` (agent sessions with no SAGA header, open loop, "
              "client disconnects, an emulator and Redis restarted) and the gateway's RSS, "
              "open files, Redis keys and slot files at start and end; with `--heap` "
              "(or `--trace-malloc`, which adds tracemalloc's growth by traceback) where "
              "the gateway's memory went: live bytes (pymalloc blocks and glibc's in "
              "use) against the allocators' arenas and free bytes.",
              "* **simulator**: `saga.sim.faults.Fault` outages; a dead replica's calls "
              "go back to the policy's `place` and are recomputed; no KV block or call "
              "is left behind.",
              "",
              "## Slow machines: how the end-to-end tests wait",
              "",
              SLOW_MACHINES,
              ""]
    return "\n".join(lines)


#: How the tests that start real processes wait (kept with the rows' meanings above).
SLOW_MACHINES = (
    'The end-to-end tests (these scenarios, tests/gateway, tests/ray_serve) run on a '
    '2-core machine shared at load 20-30, where starting a Python process takes seconds '
    'of wall time per CPU second. Nothing waits a fixed time: a started process is polled '
    'until it answers, up to 180 s (`saga_procs.START_DEADLINE`), and a process that '
    "exits fails the wait at once; Ray Serve's proxy is waited for as `saga ray` waits "
    "for it (`saga.integrations.ray.serve_ready`: Serve's fixed 60 s and its 5 s proxy "
    "ready check replaced by polling Serve's status and the proxy's routes, up to 600 s); "
    'a call that must still run while others are checked streams and is held open (its '
    'headers say it was placed), rather than timed to last long enough; and what is '
    "compared with the simulator is read on the emulator's model clock (`/saga/calls`), "
    "which a busy machine does not stretch, not the client's wall clock, which it does "
    '(17-187 % at nice 15 against two busy loops).'
)


if __name__ == "__main__":
    sys.exit(main())
