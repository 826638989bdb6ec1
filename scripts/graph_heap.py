"""The agent graphs alone under the soak's call pattern, in process: where their memory goes.

    python scripts/graph_heap.py --calls 300000 --every 25000
    python scripts/graph_heap.py --calls 300000 --trace          # adds tracemalloc (slower)

No HTTP, no event loop, no clock: ``scripts/soak.py``'s sessions (two tenants, one coding
agent, 3 to 8 calls each, a tool between calls, up to 400 open at once, ``--rate`` calls
per simulated second) fed to a :class:`GraphStore` through the reads and observations the
saga policy makes of it in the gateway, in its order: at a call's start the transition
and ``remaining``; at its finish the output, the retention's gap (mean, TTL table) and
the predicted end (``end_wait`` and the gate's, ``turn_ended`` unknown as the gateway
has it); at a session's last call the end. It prints, every ``--every`` calls, the
process's RSS, pymalloc's arenas and allocated blocks, glibc's heap (free bytes kept),
the entries held in the graphs' gap caches and, with ``--trace``, tracemalloc's current
and peak. Deterministic for a seed (the figures it prints are memory, not decisions).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import random
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from soak_traced_gateway import _pymalloc  # a sibling script: scripts/ is on sys.path

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.ends import end_wait, gate_min_ends
from saga.sched.saga.graph import GraphStore, node_key
from saga.sched.saga.retention import TTL_QUANTILES

TOOLS = ("Grep", "Read", "Edit", "Bash")
AGENT = "claude-code"


@dataclass
class Session:
    tenant: str
    calls_left: int
    index: int = 0
    node: str = ""
    last_finish: float | None = None
    prompt: int = 900


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pymalloc_arenas() -> int:
    """Arenas pymalloc holds now (read as the soak's traced gateway reads them)."""
    return _pymalloc().get("arenas", -1)


def glibc_free_mb() -> float | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    return float(libc.mallinfo2().fordblks) / 2**20


def cached_entries(store: GraphStore) -> int:
    """Entries the graphs' current gaps keep (quantiles, bisection CDFs, TTL tables)."""
    total = 0
    for graph in store._graphs.values():
        for gap in (getattr(graph, "_settled", None) or graph)._gaps.values():
            total += len(gap._quantiles) + len(gap._bisected) + len(gap._ttl_tables)
    return total


def run(calls: int, every: int, rate: float, seed: int, config: SagaConfig,
        trace: bool) -> None:
    rng = random.Random(seed)
    store = GraphStore(config)
    sessions: list[Session] = []
    made = 0
    print(f"{'calls':>8} {'rss MB':>7} {'arenas':>6} {'blocks':>8} {'glibc free MB':>13} "
          f"{'gap cache':>9}" + (f" {'traced MB':>9} {'peak MB':>8}" if trace else ""))
    for k in range(1, calls + 1):
        now = k / rate
        sessions = [s for s in sessions if s.calls_left > 0]
        idle = sessions  # calls finish at once here: every open session is idle
        if idle and (len(sessions) >= 400 or rng.random() < 0.8):
            s = rng.choice(idle)
        else:
            made += 1
            s = Session("alpha" if made % 2 else "beta", rng.randint(3, 8))
            sessions.append(s)
        graph = store.get(AGENT, s.tenant)
        tool = rng.choice(TOOLS) if s.index else None
        node = node_key(tool, s.index, config.depth_buckets)
        grown = 0
        if s.last_finish is not None:
            grown = 60 + rng.randint(0, 40)
            graph.observe_transition(s.node, node, now - s.last_finish, grown)
        s.node, s.prompt = node, s.prompt + grown
        graph.remaining(node)
        # the call finishes (one output token, as the soak's max_tokens 1)
        graph.observe_output(node, 1)
        gap = graph.gap(node)
        gap.mean()
        gap.ttl_table(config.ttl_max, TTL_QUANTILES)
        s.index += 1
        s.calls_left -= 1
        s.last_finish = now
        if s.calls_left == 0:
            graph.observe_end(node)
        else:
            end_wait(graph, node, None, config, False)
            end_wait(graph, node, None, config, False, gate_min_ends(graph, config))
        if k % every == 0:
            line = (f"{k:>8} {rss_mb():>7.1f} {pymalloc_arenas():>6} "
                    f"{sys.getallocatedblocks():>8} {glibc_free_mb() or 0.0:>13.2f} "
                    f"{cached_entries(store):>9}")
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                line += f" {current / 2**20:>9.1f} {peak / 2**20:>8.1f}"
            print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=25_000, help="calls between figures")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="calls per simulated second (sets the tool gaps)")
    parser.add_argument("--refresh-every", type=int, default=None,
                        help="the graphs' refresh_every (default: the config's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="also tracemalloc's figures")
    args = parser.parse_args()
    overrides = {} if args.refresh_every is None else {"refresh_every": args.refresh_every}
    config = SagaConfig(**overrides)
    if args.trace:
        tracemalloc.start()
    run(args.calls, args.every, args.rate, args.seed, config, args.trace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
