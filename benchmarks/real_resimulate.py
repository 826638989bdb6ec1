"""A recorded real run's simulator figures, simulated again by the current code (no engine).

    SAGA_TRACES_DIR=../shared/traces PYTHONPATH=src python benchmarks/real_resimulate.py DIR \
        [--write] [--results docs/RESULTS.md]

DIR is a ``saga bench real --out DIR`` (summary.json, runs.jsonl). The vLLM part's sessions
are simulated again from the record's own settings and calibration probes, as the bench
simulates them (saga.bench.real_rebuild.resimulate; about a minute of CPU at most), and the
simulator's error of each policy's mean TCT is printed, recorded against new, per case.
Use it when the simulator learns to model the deployment better (the gateways' token-scale
prior, docs/engines.md, "The light case's tie"). ``--write`` keeps the record's summary as
summary-recorded.json and writes the new summary.json and real.md; ``--results`` also puts
the record's "Real engines" section into that RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saga.bench.real import put_real_section, render_markdown
from saga.bench.real_rebuild import resimulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a `saga bench real --out` directory")
    parser.add_argument("--write", action="store_true",
                        help="write the new summary.json and real.md (the old summary kept "
                        "as summary-recorded.json)")
    parser.add_argument("--results", type=Path, help="also update this RESULTS.md")
    args = parser.parse_args()
    recorded = json.loads((args.out / "summary.json").read_text())
    fresh = resimulate(args.out)
    for key in ("sim_error", "sim_error_light"):
        old, new = recorded.get(key, {}), fresh.get(key, {})
        line = ", ".join(f"{p} {old.get(p, float('nan')):+.1%} -> {v:+.1%}"
                         for p, v in new.items())
        print(f"{key}: {line}")
    if args.write:
        kept = args.out / "summary-recorded.json"
        if not kept.exists():
            kept.write_text(json.dumps(recorded, indent=2) + "\n")
        (args.out / "summary.json").write_text(json.dumps(fresh, indent=2) + "\n")
        (args.out / "real.md").write_text(render_markdown(fresh))
    if args.results is not None:
        put_real_section(args.results, fresh)


if __name__ == "__main__":
    main()
