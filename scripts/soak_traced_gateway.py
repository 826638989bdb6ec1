"""The gateway under tracemalloc, for ``scripts/soak.py --trace-malloc``.

    python scripts/soak_traced_gateway.py --config gateway.json --out DIR [--frames 12]

Runs the same gateway as ``python -m saga.gateway`` (the same loop: uvloop when installed)
with :mod:`tracemalloc` on from the first import. Each SIGUSR1 writes, in the event loop
between two callbacks (so that no call is half done), after a full collection:

* ``DIR/snapshot-N.tracemalloc``: the tracemalloc snapshot (``Snapshot.load`` reads it;
  none with ``--frames 0``);
* ``DIR/snapshot-N.json``: Python-level traced memory, the process's RSS, glibc's heap
  (``mallinfo2``: bytes in use and free in the arenas: fragmentation shows as free bytes
  the allocator keeps), pymalloc's arenas (``sys._debugmallocstats``: live and free bytes
  in them), at snapshot 1 the RSS once ``malloc_trim(0)`` gave free heap pages back (not
  at 0: a trim changes what follows) and the live objects by type (``gc.get_objects``:
  containers and instances, not strings or numbers);

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


def _trim() -> bool:
    """glibc's malloc_trim(0): free heap pages go back to the system (False elsewhere)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas (``sys._debugmallocstats``, which writes to the C stderr): arenas
    mapped, bytes in live blocks and bytes free in its pools (its own fragmentation)."""
    import os
    import sys
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    wanted = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "live_bytes",
              "# bytes in available blocks": "free_bytes",
              "Total": "total_bytes"}
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        key = wanted.get(name.strip())
        if key is not None and key not in stats:
            stats[key] = int(value.strip().replace(",", ""))
    return stats


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

    def __init__(self, out: Path, trim_at: int = 1) -> None:
        self.out = out
        self.taken = 0
        self.trim_at = trim_at  # the snapshot after which malloc_trim is measured

    def take(self) -> None:
        gc.collect()
        n = self.taken
        self.taken += 1
        # before the snapshot's own allocations
        rss_kb, heap, pymalloc = _rss_kb(), _heap(), _pymalloc()
        current, peak = tracemalloc.get_traced_memory()
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot()
            # the snapshot's own frames and this module's work are not the gateway's
            snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                               tracemalloc.Filter(False, __file__)])
            snapshot.dump(str(self.out / f"snapshot-{n}.tracemalloc"))
            del snapshot
        types = Counter(_type_name(type(o)) for o in gc.get_objects())
        facts: dict[str, Any] = {
            "n": n, "time": time.time(), "rss_kb": rss_kb, "traced_bytes": current,
            "traced_peak_bytes": peak, "tracemalloc_overhead_bytes":
                tracemalloc.get_tracemalloc_memory(),
            "heap": heap, "pymalloc": pymalloc, "gc_objects": sum(types.values()),
            "objects_by_type": dict(types),
            # at the last snapshot only (a trim changes what follows): what RSS would be if
            # glibc gave its free heap pages back, so that the rest is live or pymalloc's
            "rss_after_trim_kb": _rss_kb() if self.trim_at == n and _trim() else None,
        }
        # written last, whole: the soak waits for this file
        tmp = self.out / f"snapshot-{n}.json.tmp"
        tmp.write_text(json.dumps(facts))
        tmp.rename(self.out / f"snapshot-{n}.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the snapshots")
    parser.add_argument("--frames", type=int, default=12,
                        help="traceback depth kept (12); 0: no tracemalloc, only the figures")
    args = parser.parse_args()
    if args.frames > 0:
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
