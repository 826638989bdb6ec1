"""The gateway under tracemalloc, for ``scripts/soak.py --trace-malloc``.

    python scripts/soak_traced_gateway.py --config gateway.json --out DIR [--frames 12]

Runs the same gateway as ``python -m saga.gateway`` (the same loop: uvloop when installed)
with :mod:`tracemalloc` on from the first import. Each SIGUSR1 writes, in the event loop
between two callbacks (so that no call is half done), after a full collection:

* ``DIR/snapshot-N.tracemalloc``: the tracemalloc snapshot (``Snapshot.load`` reads it);
* ``DIR/snapshot-N.json``: Python-level traced memory, the process's RSS, glibc's heap
  (``mallinfo2``: bytes in use and free in the arenas: fragmentation shows as free bytes
  the allocator keeps) and the live objects by type (``gc.get_objects``: containers and
  instances, not strings or numbers);

N counting from 0. The soak compares the first and the last snapshot; RSS growth with
flat traced memory is the allocator's (fragmentation, arenas kept), not a Python leak.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import signal
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap() -> dict[str, int] | None:
    """glibc's malloc arenas (None on another libc): bytes mapped, in use and free."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"arena_bytes": info.arena, "mmap_bytes": info.hblkhd,
            "in_use_bytes": info.uordblks, "free_bytes": info.fordblks}


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _type_name(t: type) -> str:
    module = getattr(t, "__module__", None)  # a descriptor on some extension types
    return f"{module}.{t.__qualname__}" if isinstance(module, str) else t.__qualname__


class Snapshots:
    """Writes numbered snapshots into ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.taken = 0

    def take(self) -> None:
        gc.collect()
        n = self.taken
        self.taken += 1
        snapshot = tracemalloc.take_snapshot()
        # the snapshot's own frames and this module's work are not the gateway's
        snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                           tracemalloc.Filter(False, __file__)])
        snapshot.dump(str(self.out / f"snapshot-{n}.tracemalloc"))
        current, peak = tracemalloc.get_traced_memory()
        types = Counter(_type_name(type(o)) for o in gc.get_objects())
        facts: dict[str, Any] = {
            "n": n, "time": time.time(), "rss_kb": _rss_kb(), "traced_bytes": current,
            "traced_peak_bytes": peak, "tracemalloc_overhead_bytes":
                tracemalloc.get_tracemalloc_memory(),
            "heap": _heap(), "gc_objects": sum(types.values()), "objects_by_type": dict(types),
        }
        # written last, whole: the soak waits for this file
        tmp = self.out / f"snapshot-{n}.json.tmp"
        tmp.write_text(json.dumps(facts))
        tmp.rename(self.out / f"snapshot-{n}.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the snapshots")
    parser.add_argument("--frames", type=int, default=12, help="traceback depth kept (12)")
    args = parser.parse_args()
    tracemalloc.start(args.frames)

    import asyncio

    from saga.aio import run
    from saga.gateway.app import serve
    from saga.gateway.config import load_config

    config = load_config(args.config)
    snapshots = Snapshots(args.out)

    async def traced() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, snapshots.take)
        await serve(config)

    print(f"soak: traced gateway on http://{config.host}:{config.port}", flush=True)
    run(traced())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
