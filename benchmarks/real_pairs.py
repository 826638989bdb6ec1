"""The paired ratios of recorded real runs by the baseline's replica load, and each run's
lost-KV calls (saga.bench.real_pairs).

    PYTHONPATH=src python benchmarks/real_pairs.py [--case CASE] [--vs NAME] DIR [DIR ...]

Each DIR is a ``saga bench real --out DIR`` (its runs.jsonl); runs pair by (DIR,
repetition). CASE: memory (default) or light; NAME: the baseline (default vllm-affinity and
continuum); the candidate is saga.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saga.bench.real_pairs import misses, replica_groups, sessions_by_place
from saga.metrics.summary import speedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--case", default="memory")
    parser.add_argument("--vs", action="append", default=None)
    args = parser.parse_args(argv)
    runs = []
    for number, folder in enumerate(args.dirs):
        for line in (folder / "runs.jsonl").read_text().splitlines():
            run = json.loads(line)
            if run["case"] == args.case:
                run["key"] = (number, run["repetition"])
                runs.append(run)
    saga = {f"{r['key']}/{w}": t for r in runs if r["policy"] == "saga"
            for w, t in r["tct"].items()}
    for baseline in args.vs or ["vllm-affinity", "continuum"]:
        base = {f"{r['key']}/{w}": t for r in runs if r["policy"] == baseline
                for w, t in r["tct"].items()}
        if not base:
            continue
        s = speedup(base, saga)
        print(f"saga/{baseline}: {s['n']} pairs, geomean {s['geomean']:.2f} "
              f"(95 % CI {s['ci_low']:.2f}-{s['ci_high']:.2f})")
        for group in replica_groups(runs, "saga", baseline):
            print(f"  on a {baseline} replica of {group.sessions} sessions: {group.pairs} "
                  f"pairs, geomean {group.geomean:.2f}, sd of log {group.sd_log:.2f}")
    for run in runs:
        if run["policy"] == "saga":
            m = misses(run)
            print(f"saga run {run['key']}: own-replica misses {m.own} ({m.own_tokens} "
                  f"tokens), moved {m.moved} ({m.moved_tokens} tokens)")
            for g in sessions_by_place(run):
                kind = "held at the door" if g.held else "admitted at once"
                wait = f", waited {g.mean_wait:.2f} s" if g.held else ""
                print(f"  {kind}, on a replica of {g.sessions} sessions: {g.count}, "
                      f"mean TCT {g.mean_tct:.2f} s{wait}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
