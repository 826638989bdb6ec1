"""The ``saga workload`` command: generate, import, stats, list."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from saga.cli_args import check_output_dir, check_output_file, check_seed
from saga.core.trace import read_trace, write_trace
from saga.core.workflow import Workflow
from saga.errors import UserError
from saga.workloads import stats
from saga.workloads.registry import build_workload, describe, list_workloads

# `import FORMAT` names: the reader registry entries.
FORMATS = ("claude-code", "mooncake", "azure-code", "azure-conv", "lmcache-miniswe",
           "lmcache-magagent", "lmcache-taubench")


def _params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _progress(workflows: Iterable[Workflow], console: Console, label: str
              ) -> Iterator[Workflow]:
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed} workflows"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        for w in workflows:
            bar.advance(task)
            yield w


def cmd_generate(args: argparse.Namespace, console: Console | None = None) -> int:
    """Build a registry workload and write it as a canonical trace."""
    console = console or Console(stderr=True)
    check_seed(args.seed)
    check_output_file(Path(args.out), parent_must_exist=True)
    wl = build_workload(args.name, seed=args.seed, params=_params(args.param))
    n = write_trace(wl.workflows, args.out)
    console.print(f"wrote {n} workflows to {args.out}")
    return 0


def cmd_import(args: argparse.Namespace, console: Console | None = None) -> int:
    """Convert a public trace file into the canonical format."""
    console = console or Console(stderr=True)
    if args.format not in FORMATS:
        raise UserError(f"unknown format {args.format!r}; choose one of: {', '.join(FORMATS)}")
    if not Path(args.path).is_file():
        raise UserError(f"{args.path}: no such file")
    check_seed(args.seed)
    check_output_file(Path(args.out), parent_must_exist=True)
    params = {**_params(args.param), "path": args.path}
    wl = build_workload(args.format, seed=args.seed, params=params)
    n = write_trace(_progress(wl.workflows, console, f"writing {args.format}"), args.out)
    console.print(f"imported {n} workflows from {args.path} to {args.out}")
    return 0


def cmd_stats(args: argparse.Namespace, console: Console | None = None) -> int:
    """Print summary statistics of a trace file, and optionally write plots."""
    console = console or Console()
    if args.plots:
        check_output_dir(Path(args.plots), "--plots")
    workflows = read_trace(args.file)
    s = stats.compute(workflows)
    table = Table(title=f"{args.file}: {len(workflows)} workflows, "
                        f"{int(s.calls_per_workflow.sum())} calls, "
                        f"arrivals over {s.arrival_span:.1f} s")
    for col in ("quantity", "n", "mean", "p50", "p90", "max"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    for label, n, mean, p50, p90, mx in stats.quantile_rows(s):
        table.add_row(label, str(n), *(f"{v:,.2f}" for v in (mean, p50, p90, mx)))
    console.print(table)
    console.print("tenants: " + ", ".join(f"{t} {n}" for t, n in sorted(s.tenants.items())))
    if args.plots:
        files = stats.plot(s, args.plots, title=Path(args.file).name)
        console.print(f"wrote {len(files)} plots to {args.plots}")
    return 0


def cmd_list(args: argparse.Namespace, console: Console | None = None) -> int:
    """List registry workloads with their descriptions and parameters."""
    console = console or Console()
    table = Table(title="workloads")
    for col in ("name", "description", "params"):
        table.add_column(col)
    for name in list_workloads():
        desc, model = describe(name)
        table.add_row(name, desc, ", ".join(model.model_fields))
    console.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``workload`` and its subcommands; each sets ``func`` to a handler returning an int."""
    p = subparsers.add_parser("workload", help="generate, import and inspect workloads")
    sub = p.add_subparsers(dest="workload_command", required=True)
    g = sub.add_parser("generate", help="build a registry workload into a trace file")
    g.add_argument("name", help="registry name (see `saga workload list`)")
    g.add_argument("--param", action="append", metavar="K=V", help="workload parameter")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--out", required=True, help="output trace (.jsonl or .jsonl.gz)")
    g.set_defaults(func=cmd_generate)
    i = sub.add_parser("import", help="convert a public trace into the canonical format")
    i.add_argument("format", choices=FORMATS, help="trace format")
    i.add_argument("path", help="the trace file")
    i.add_argument("--param", action="append", metavar="K=V", help="reader parameter")
    i.add_argument("--seed", type=int, default=0, help="seed for generated arrivals")
    i.add_argument("--out", required=True, help="output trace (.jsonl or .jsonl.gz)")
    i.set_defaults(func=cmd_import)
    s = sub.add_parser("stats", help="summary statistics of a trace file")
    s.add_argument("file", help="a canonical trace file")
    s.add_argument("--plots", metavar="DIR", help="also write PNG plots here")
    s.set_defaults(func=cmd_stats)
    ls = sub.add_parser("list", help="list the registry workloads")
    ls.set_defaults(func=cmd_list)
