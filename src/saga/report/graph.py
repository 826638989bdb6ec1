"""Show a learned Agent Execution Graph: a table and a drawing (`saga graph show`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from saga.cli_args import check_output_dir
from saga.errors import UserError

MIN_EDGE_P = 0.05  # edges rarer than this are left out of the drawing


def load_graphs(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "graph.json" if run_dir.is_dir() else run_dir
    if not path.exists():
        raise UserError(
            f"{path}: no learned graph here; run `saga simulate --policy saga --out DIR` first "
            "(only SAGA policies learn execution graphs)"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON: {error}") from None
    return data


def graph_table(agent: str, graph: dict[str, Any]) -> Table:
    table = Table(title=f"learned execution graph of {agent!r}")
    for column in ("call site", "calls", "P(continue)", "output tok", "growth tok",
                   "E[calls left]", "top successors"):
        table.add_column(column, justify="left" if column in ("call site", "top successors")
                         else "right")
    edges: dict[str, list[dict[str, Any]]] = {}
    for edge in graph.get("edges", []):
        edges.setdefault(edge["src"], []).append(edge)
    for key, node in graph.get("nodes", {}).items():
        top = sorted(edges.get(key, []), key=lambda e: -e["p"])[:3]
        table.add_row(
            key, f"{node['calls']:.0f}", f"{node['p_continue']:.2f}",
            f"{node['output_tokens']:.0f}", f"{node['growth_tokens']:.0f}",
            f"{node['remaining_calls']:.1f}",
            ", ".join(f"{e['dst']} {e['p']:.2f}" for e in top),
        )
    return table


def draw_graph(agent: str, graph: dict[str, Any], path: Path) -> Path:
    """Call sites in columns by call-depth bucket, edges as arrows as thick as likely."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = graph.get("nodes", {})
    columns: dict[str, list[str]] = {}
    for key in nodes:
        bucket = key.rsplit("#", 1)[-1] if "#" in key else "0"
        columns.setdefault(bucket, []).append(key)
    order = sorted(columns, key=lambda b: int(b) if b.isdigit() else 0)
    position = {}
    for x, bucket in enumerate(order):
        for y, key in enumerate(sorted(columns[bucket])):
            position[key] = (x, -y)
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(order)), 4 + 0.4 * max(
        (len(v) for v in columns.values()), default=1)))
    for edge in graph.get("edges", []):
        if edge["p"] < MIN_EDGE_P or edge["src"] not in position or edge["dst"] not in position:
            continue
        (x0, y0), (x1, y1) = position[edge["src"]], position[edge["dst"]]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={
            "arrowstyle": "->", "lw": 0.5 + 4 * edge["p"], "alpha": 0.6,
            "connectionstyle": "arc3,rad=0.15"})
    for key, (x, y) in position.items():
        node = nodes[key]
        ax.scatter([x], [y], s=80 + 400 * min(1.0, node["calls"] / 200), zorder=3)
        ax.text(x + 0.05, y + 0.12, f"{key}\nP(cont) {node['p_continue']:.2f}", fontsize=7)
    ax.set_title(f"learned execution graph of {agent!r} (edges with p >= {MIN_EDGE_P})", pad=24)
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "graph",
        help="inspect the execution graphs SAGA learned in a run",
        description="Show the Agent Execution Graphs a SAGA policy learned during "
        "`saga simulate --policy saga --out DIR`: a table per agent type and a drawing.",
    )
    sub = p.add_subparsers(dest="graph_command", metavar="SUBCOMMAND")
    sub.required = True
    show = sub.add_parser("show", help="print and draw the learned graphs of a finished run")
    show.add_argument("run", type=Path, help="the run's --out directory (or its graph.json)")
    show.add_argument("--agent", help="only this agent type")
    show.add_argument("--png", type=Path, help="folder for drawings (default: the run folder)")
    show.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    graphs = load_graphs(args.run)
    if args.agent is not None:
        if args.agent not in graphs:
            raise UserError(f"no graph for agent {args.agent!r}; learned: {', '.join(graphs)}")
        graphs = {args.agent: graphs[args.agent]}
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    folder = args.png or (args.run if args.run.is_dir() else args.run.parent)
    check_output_dir(folder, "--png" if args.png else "the run folder")
    for agent, graph in graphs.items():
        console.print(graph_table(agent, graph))
        drawn = draw_graph(agent, graph, folder / f"graph-{agent}.png")
        console.print(f"drew {drawn}")
    return 0
