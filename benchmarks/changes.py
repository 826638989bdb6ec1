"""What each rule change did to the headline figures (issue 14 item 5).

Runs the headline cases (real Claude Code sessions and coding agents, saga against
vllm-affinity) with the simulator's rules changed one at a time, cumulatively: old ->
+ vLLM's whole-prompt admission -> + idle-detected ends -> + compacted contexts -> + the
long-prompt calibration (saga.bench.changes says what each switch is). Same workflows,
seeds and rates in every row. Writes DIR/changes.md (the table) and DIR/changes.json;
``--results docs/RESULTS.md`` also puts the table into that file as its kept section
`changes` (which `saga bench all --results` carries over when it regenerates the file).

    python benchmarks/changes.py --quick --out runs/changes-quick --results docs/RESULTS.md
    python benchmarks/changes.py --out runs/changes      # the full cases (hours on 2 cores)

Prints the CPU time of the simulations (the figure to compare on a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from saga.bench.changes import FULL_CASES, QUICK_CASES, STEPS, markdown, measure
from saga.bench.sections import put_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick cases (minutes)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--results", type=Path, help="also put the table into this "
                        "RESULTS.md (its kept section `changes`)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"changes: --out {args.out} is not a directory", file=sys.stderr)
        return 2
    if args.results is not None and not args.results.is_file():
        print(f"changes: --results {args.results} is not a file", file=sys.stderr)
        return 2
    cases = QUICK_CASES if args.quick else FULL_CASES
    command = (f"python benchmarks/changes.py{' --quick' if args.quick else ''} --out "
               f"{args.out}" + (f" --results {args.results}" if args.results else ""))
    started = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        cells = measure(cases, pool, say=lambda m: print(m, flush=True))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime
    text = markdown(cells, cases, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "changes.md").write_text(text)
    raw = {
        "quick": args.quick,
        "steps": [dataclasses.asdict(s) for s in STEPS],
        "cases": [{**dataclasses.asdict(c), "params": dict(c.params)} for c in cases],
        "cells": [{"step": step, "case": case, "speedup": cell.speedup,
                   "runs": {p: dataclasses.asdict(r) for p, r in cell.runs.items()}}
                  for (step, case), cell in cells.items()],
    }
    (args.out / "changes.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(text)
    if args.results is not None:
        args.results.write_text(put_section(args.results.read_text(), "changes", text))
        print(f"wrote the `changes` section of {args.results}")
    print(f"wrote {args.out / 'changes.md'} and {args.out / 'changes.json'}; wall "
          f"{time.perf_counter() - started:.0f} s, simulations' CPU {cpu:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
