"""The ``saga`` command line.

Every bad input ends in one clear line on stderr and a non-zero exit, never a
traceback: user errors are :class:`saga.errors.UserError`.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from saga import __version__
from saga.cli_args import check_output_dir, check_seed
from saga.errors import UserError

DESCRIPTION = """\
SAGA: workflow-atomic scheduling for AI-agent inference on GPU clusters.

Simulate a cluster serving agent workflows under a scheduling policy, compare
policies, and inspect workloads. Run `saga COMMAND --help` for each command.
"""

SIMULATE_EPILOG = """\
examples:
  saga simulate --out runs/demo
      the built-in agent scenario on the `small` cluster under vllm-affinity
  saga simulate --workload coding-agent --param count=200 --cluster paper-a100-64 \\
      --policy vllm-rr --seed 3 --out runs/coding
  saga simulate --trace my_workflows.jsonl --cluster h100-64-8b --out runs/mine

outputs: DIR/summary.json (metrics), DIR/workflows.csv (one row per workflow).
list the presets with `saga list`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"saga {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_simulate(commands)
    _add_list(commands)
    from saga.bench.cli import register as register_bench
    from saga.emulator.cli import register as register_emulate
    from saga.gateway.cli import register as register_serve
    from saga.integrations.ray.cli import register as register_ray
    from saga.report.graph import register as register_graph
    from saga.workloads.cli import register as register_workload

    register_bench(commands)
    register_serve(commands)
    register_emulate(commands)
    register_workload(commands)
    register_graph(commands)
    register_ray(commands)
    return parser


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "simulate",
        help="simulate a cluster serving a workload under one policy",
        description="Simulate a cluster of engine replicas serving agent workflows under one "
        "scheduling policy, print a summary and write the metrics to --out.",
        epilog=SIMULATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--workload",
        default="agents",
        help="a built-in workload generator or trace reader (default: agents; see `saga list`)",
    )
    source.add_argument("--trace", type=Path, help="a workflow trace file (JSON Lines, .gz ok)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="a workload parameter, repeatable (see `saga workload list`)",
    )
    p.add_argument("--cluster", default="small", help="cluster preset (default: small)")
    p.add_argument("--policy", default="vllm-affinity", help="policy (default: vllm-affinity)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", type=Path, default=Path("runs/simulate"), help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--end-idle-timeout", type=float, default=None, metavar="S",
        help="seconds with no call after which a workflow without an end marker is seen "
        "ended (default: the cluster's, 600 as the gateway's workflow_idle_timeout)",
    )
    p.add_argument(
        "--strict-context",
        action="store_true",
        help="fail, naming the call, if a call is longer than the cluster's model context "
        "(default: such calls are not simulated, their workflows are rejected and counted "
        "in calls_over_context, with a warning)",
    )
    p.set_defaults(handler=_cmd_simulate)


def _add_list(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("list", help="list policies, clusters and workloads")
    p.set_defaults(handler=_cmd_list)


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` to a dict, with a clear error for a malformed item."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        params[key.strip()] = value.strip()
    return params


def _cmd_list(args: argparse.Namespace) -> int:
    from saga.engine.cluster import CLUSTERS
    from saga.sched.registry import list_policies
    from saga.workloads import list_workloads

    console = Console()
    console.print("[bold]policies:[/bold] " + ", ".join(list_policies()))
    console.print()
    # the short facts in a table, the descriptions below it at full width: a description
    # in a table cell wraps into a narrow column of many lines (and gets cut) at 80 columns
    table = Table(title="clusters", title_justify="left")
    for column in ("name", "replicas", "GPUs", "model"):
        table.add_column(column, no_wrap=True, justify="right" if column == "replicas" else "left")
    for spec in CLUSTERS.values():
        tp = f", TP {spec.tp}" if spec.tp > 1 else ""
        table.add_row(spec.name, str(spec.replicas), f"{spec.gpus} x {spec.gpu}{tp}", spec.model)
    console.print(table)
    about = Table.grid(padding=(0, 2))
    about.add_column(no_wrap=True, style="bold")
    about.add_column(overflow="fold")
    for spec in CLUSTERS.values():
        about.add_row(spec.name, spec.description)
    console.print(about)
    console.print()
    console.print("[bold]workloads:[/bold] " + ", ".join(list_workloads())
                  + " (parameters: `saga workload list`)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from saga.core.context import check_context
    from saga.core.trace import read_trace
    from saga.engine.cluster import get_cluster
    from saga.sched.registry import build_policy
    from saga.sim.run import run_policy, write_outputs
    from saga.workloads import build_workload

    check_seed(args.seed)
    check_output_dir(args.out)
    cluster = get_cluster(args.cluster)
    build_policy(args.policy)  # fail fast on an unknown name
    params = parse_params(args.param)
    if args.trace is not None:
        if params:
            raise UserError("--param applies to --workload, not to --trace")
        if not args.trace.exists():
            raise UserError(f"trace file not found: {args.trace}")
        workflows = read_trace(args.trace)
        closed_loop = None
        source = str(args.trace)
    else:
        workload = build_workload(args.workload, seed=args.seed, params=params,
                                  context_window=cluster.cost_model().model.max_context)
        workflows = list(workload.workflows)
        closed_loop = workload.closed_loop
        source = args.workload
    if not workflows:
        raise UserError(f"{source}: no workflows to simulate")
    model = cluster.cost_model().model
    if args.strict_context:
        check_context(workflows, model.max_context, f"{model.name} ({cluster.name})")
    console = Console(stderr=True)
    started = time.perf_counter()
    horizon = max(w.arrival for w in workflows) or 1.0
    with Progress(
        TextColumn("[bold]simulating[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[clock]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{args.policy} on {cluster.name}", total=horizon, clock="")

        def update(now: float) -> None:
            progress.update(task, completed=min(now, horizon), clock=f"t={now:,.0f}s")

        out = run_policy(
            cluster, args.policy, workflows, seed=args.seed, closed_loop=closed_loop,
            progress=update, end_idle_timeout=args.end_idle_timeout,
        )
    wall = time.perf_counter() - started
    meta = {
        "policy": args.policy,
        "cluster": cluster.name,
        "workload": source,
        "seed": args.seed,
        "workflows": len(workflows),
    }
    write_outputs(out, args.out, meta)
    over = out.summary.get("calls_over_context", 0)
    if over:
        print(f"saga: warning: {over} calls longer than the {model.max_context:,}-token "
              f"context of {model.name} were not simulated (their workflows are rejected; "
              "see calls_over_context, --strict-context)", file=sys.stderr)
    _print_summary(out.summary, meta, wall)
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'workflows.csv'}")
    return 0


def _print_summary(summary: dict[str, object], meta: dict[str, object], wall: float) -> None:
    console = Console()
    table = Table(
        title=f"{meta['policy']} on {meta['cluster']}, {meta['workload']} "
        f"({meta['workflows']} workflows, seed {meta['seed']})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("TCT mean / p50 / p99 (s)", _fmt3(summary, "tct_mean", "tct_p50", "tct_p99")),
        ("slowdown mean / p99", _fmt3(summary, "slowdown_mean", "slowdown_p99")),
        ("TTFT p50 / p99 (s)", _fmt3(summary, "ttft_p50", "ttft_p99")),
        ("prefix hit rate", _pct(summary["prefix_hit_rate"])),
        ("recomputed tokens", f"{summary['recomputed_tokens']:,}"),
        ("KV memory utilization", _pct(summary["kv_utilization"])),
        ("SLO attainment", _pct(summary["slo_attainment"])),
        ("throughput (workflows/s)", f"{_num(summary['throughput_workflows_per_s']):.4f}"),
        ("throughput (output tokens/s)", f"{_num(summary['throughput_output_tokens_per_s']):,.0f}"),
        (
            "workflows completed / rejected",
            f"{summary['workflows_completed']} / {summary['workflows_rejected']}",
        ),
        ("Jain's index over tenants", f"{_num(summary['jain_index']):.3f}"),
        (
            "simulated seconds / wall seconds",
            f"{_num(summary['simulated_seconds']):,.0f} / {wall:.1f}",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _fmt3(summary: dict[str, object], *keys: str) -> str:
    return " / ".join(f"{_num(summary[k]):.2f}" for k in keys)


def _pct(value: object) -> str:
    number = _num(value)
    return "n/a" if math.isnan(number) else f"{100 * number:.1f} %"


def _terminated(signum: int, _frame: object) -> None:
    # Python's default SIGTERM ends the process without unwinding, which left the engines
    # a `saga bench real` had started running (and holding their cores) after a `kill`:
    # unwind as on Ctrl-C, so every `with` that started a process stops it. A second
    # SIGTERM would cut that stopping short (it did: orphaned engines), so it is ignored
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        handler = getattr(args, "handler", None) or args.func
        code: int = handler(args)
        return code
    except UserError as error:
        print(f"saga: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saga: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
