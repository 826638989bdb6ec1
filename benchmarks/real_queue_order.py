"""Who got a replica's slot first at the gateway's queue, first calls or later calls, in
recorded real runs (the order warm first changes: docs/engines.md, "Warm first at the
gateway's queue").

    PYTHONPATH=src python benchmarks/real_queue_order.py DIR [DIR ...] [--case memory]

For each DIR (a ``saga bench real --out DIR``, its runs.jsonl) and policy, from the runs'
``phases`` (each call's arrival, door, retention wait and gateway queue, so when it joined
its replica's queue and when it got a slot): the calls that waited and then started,

* ``first before a later``: a workflow's first call that got the slot while a later call of
  another workflow was waiting on that replica, split by whether the first call had waited
  5 s (warm first's default bound) or more;
* ``later before a first``: a later call that got the slot while a first call waited there.

The first calls are cold (at most 3 % of their prompt cached in runs/real-llama-s33), the
later ones mostly warm, so the first count is what warm first removes below its bound.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

BOUND = 5.0  # the SagaConfig.warm_first_wait measured (its default is None: off)
EPS = 1e-3  # the phases are rounded to 0.1 ms; starts closer than this are simultaneous


def order_counts(runs: list[dict[str, object]], case: str) -> dict[str, Counter[str]]:
    """Per policy: the counts described in the module doc."""
    out: dict[str, Counter[str]] = {}
    for run in runs:
        if run["case"] != case:
            continue
        counts = out.setdefault(str(run["policy"]), Counter())
        calls = []  # (joined the queue, got the slot, call index, replica, queued)
        phases = run["phases"]
        assert isinstance(phases, list)
        for at, _, index, replica, door, retain_wait, queued, _, _ in phases:
            joined = at + door + retain_wait
            calls.append((joined, joined + queued, index, replica, queued))
        for _, start, index, replica, queued in calls:
            if queued < 0.01:
                continue  # a slot was free: it did not wait
            waiting = [c for c in calls
                       if c[3] == replica and c[0] < start - EPS and c[1] > start + EPS]
            if index == 0 and any(c[2] > 0 for c in waiting):
                bound = f"waited >= {BOUND:g} s" if queued >= BOUND else f"waited < {BOUND:g} s"
                counts[f"first before a later, {bound}"] += 1
            if index > 0 and any(c[2] == 0 for c in waiting):
                counts["later before a first"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--case", default="memory")
    args = parser.parse_args(argv)
    keys = (f"first before a later, waited < {BOUND:g} s",
            f"first before a later, waited >= {BOUND:g} s", "later before a first")
    print("| record | policy | runs | " + " | ".join(keys) + " |")
    print("| --- | --- | ---: |" + " ---: |" * len(keys))
    for folder in args.folders:
        lines = (folder / "runs.jsonl").read_text().splitlines()
        runs = [json.loads(line) for line in lines if line.strip()]
        for policy, counts in order_counts(runs, args.case).items():
            n = sum(1 for r in runs if r["case"] == args.case and r["policy"] == policy)
            print(f"| {folder.name} | {policy} | {n} | "
                  + " | ".join(str(counts[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
