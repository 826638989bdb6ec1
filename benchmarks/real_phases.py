"""Where each call's time went in recorded real runs, phase by phase (saga.bench.real_phases).

    PYTHONPATH=src python benchmarks/real_phases.py DIR [CASE [CALLS]]

DIR is a ``saga bench real --out DIR`` (its runs.jsonl); CASE is memory (default) or light;
CALLS is all (default), first (each workflow's first call) or later (its other calls).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from saga.bench.real_phases import CallSelection, phases, render


def main(argv: list[str]) -> int:
    if (not argv or len(argv) > 3 or not (Path(argv[0]) / "runs.jsonl").is_file()
            or argv[2:] not in ([], ["all"], ["first"], ["later"])):
        print("usage: real_phases.py DIR [CASE [all|first|later]]  (DIR holds a saga bench "
              "real runs.jsonl)", file=sys.stderr)
        return 2
    lines = (Path(argv[0]) / "runs.jsonl").read_text().splitlines()
    runs = [json.loads(line) for line in lines if line.strip()]
    calls: CallSelection = "all"
    if argv[2:] == ["first"]:
        calls = "first"
    elif argv[2:] == ["later"]:
        calls = "later"
    print(render(phases(runs, argv[1] if len(argv) > 1 else "memory", calls)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
