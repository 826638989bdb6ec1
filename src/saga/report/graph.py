"""Show a learned Agent Execution Graph: a table and a drawing (`saga graph show`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from saga.cli_args import check_output_dir
from saga.errors import UserError

# The drawing shows the strongest paths only (a readable picture, not every edge):
TOP_K = 2  # the likeliest successors of each call site
MIN_EDGE_P = 0.15  # rarer edges are left out
MAX_STEPS = 6  # steps from the start call site


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


@dataclass(frozen=True)
class PathView:
    """The strongest paths of a learned graph, laid out for drawing: call sites placed in
    columns by steps from the start, and the kept edges between them."""

    columns: list[list[str]]  # call sites per step from the start, likeliest first
    edges: list[dict[str, Any]]  # kept edges, each as in graph.json (src, dst, p)
    loops: dict[str, float]  # call site -> probability it repeats itself (drawn as text)
    total_nodes: int


def strongest_paths(
    graph: dict[str, Any], top_k: int = TOP_K, min_p: float = MIN_EDGE_P,
    max_steps: int = MAX_STEPS,
) -> PathView:
    """From the start call site, follow each site's ``top_k`` likeliest successors (each at
    least ``min_p``) for up to ``max_steps`` steps. Every edge of every depth makes an
    unreadable hairball past a few nodes; these are the paths the scheduler bets on."""
    nodes = graph.get("nodes", {})
    by_src: dict[str, list[dict[str, Any]]] = {}
    for edge in graph.get("edges", []):
        if edge["src"] in nodes and edge["dst"] in nodes:
            by_src.setdefault(edge["src"], []).append(edge)
    root = "^#0" if "^#0" in nodes else max(nodes, key=lambda k: nodes[k]["calls"], default=None)
    if root is None:
        return PathView([], [], {}, 0)
    step = {root: 0}
    reach = {root: 1.0}  # probability of the likeliest kept path from the start
    frontier, edges, loops = [root], [], {}
    while frontier:
        following = []
        for src in frontier:
            ranked = sorted(by_src.get(src, []), key=lambda e: (-e["p"], e["dst"]))
            for edge in [e for e in ranked if e["p"] >= min_p][:top_k]:
                dst = edge["dst"]
                if dst == src:
                    loops[src] = edge["p"]
                    continue
                if dst not in step and step[src] < max_steps:
                    step[dst] = step[src] + 1
                    following.append(dst)
                if dst in step:
                    edges.append(edge)
                    reach[dst] = max(reach.get(dst, 0.0), reach[src] * edge["p"])
        frontier = following
    columns: list[list[str]] = [[] for _ in range(max(step.values()) + 1)]
    for key in sorted(step, key=lambda k: (-reach[k], k)):
        columns[step[key]].append(key)
    return PathView(columns, edges, loops, len(nodes))


def draw_graph(agent: str, graph: dict[str, Any], path: Path) -> Path:
    """The strongest paths (see :func:`strongest_paths`): forward edges as arrows as thick
    as likely, with their probability; edges back to an earlier step dashed and light."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    view = strongest_paths(graph)
    nodes = graph.get("nodes", {})
    position = {key: (x, -y) for x, column in enumerate(view.columns)
                for y, key in enumerate(column)}
    tallest = max((len(c) for c in view.columns), default=1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.1 * len(view.columns)), 1.8 + 1.3 * tallest))
    for edge in view.edges:
        (x0, y0), (x1, y1) = position[edge["src"]], position[edge["dst"]]
        forward = x1 == x0 + 1
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={
            "arrowstyle": "-|>", "lw": 0.6 + 4 * edge["p"], "alpha": 0.7 if forward else 0.35,
            "linestyle": "-" if forward else "--", "shrinkA": 8, "shrinkB": 8,
            "color": "#1f4e79" if forward else "#888888",
            "connectionstyle": "arc3,rad=0.0" if forward else "arc3,rad=0.35"})
        if forward:
            ax.text(x0 + 0.5 * (x1 - x0), y0 + 0.5 * (y1 - y0) + 0.06, f"{edge['p']:.2f}",
                    fontsize=7, ha="center", color="#1f4e79",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none"})
    for key, (x, y) in position.items():
        node = nodes[key]
        ax.scatter([x], [y], s=80 + 400 * min(1.0, node["calls"] / 200), zorder=3)
        loop = f"\nrepeats {view.loops[key]:.2f}" if key in view.loops else ""
        ax.text(x, y - 0.15, f"{key}\n{node['calls']:.0f} calls, P(cont) "
                f"{node['p_continue']:.2f}{loop}", fontsize=7.5, ha="center", va="top",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_title(
        f"learned execution graph of {agent!r}: the {TOP_K} likeliest next call sites of each "
        f"(p >= {MIN_EDGE_P}), up to {MAX_STEPS} steps from the start\n"
        f"{len(position)} of {view.total_nodes} call sites; dashed: to the same or an earlier step",
        fontsize=10)
    ax.set_xlim(-0.5, len(view.columns) - 0.5)
    ax.set_ylim(-tallest + 0.3, 0.5)
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
    show.add_argument("--agent", help="only this graph: TENANT/AGENT, or AGENT for every "
                      "tenant's graph of that agent type")
    show.add_argument("--png", type=Path, help="folder for drawings (default: the run folder)")
    show.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    graphs = load_graphs(args.run)
    if args.agent is not None:
        # graphs are named TENANT/AGENT: --agent takes either, the agent alone meaning
        # that agent of every tenant
        chosen = {label: g for label, g in graphs.items()
                  if args.agent in (label, label.rsplit("/", 1)[-1])}
        if not chosen:
            raise UserError(f"no graph for agent {args.agent!r}; learned: {', '.join(graphs)}")
        graphs = chosen
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    folder = args.png or (args.run if args.run.is_dir() else args.run.parent)
    check_output_dir(folder, "--png" if args.png else "the run folder")
    for agent, graph in graphs.items():
        console.print(graph_table(agent, graph))
        drawn = draw_graph(agent, graph, folder / f"graph-{agent.replace('/', '--')}.png")
        console.print(f"drew {drawn}")
    return 0
