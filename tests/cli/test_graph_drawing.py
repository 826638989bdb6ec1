"""The learned-graph drawing keeps the strongest paths only: the likeliest successors of
each call site, above a probability, a few steps from the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saga.report.graph import draw_graph, strongest_paths


def node(calls: float = 10.0) -> dict[str, float]:
    return {"calls": calls, "p_continue": 0.9, "output_tokens": 100.0, "growth_tokens": 50.0,
            "remaining_calls": 3.0}


def graph(edges: list[tuple[str, str, float]]) -> dict[str, Any]:
    names = {n for src, dst, _ in edges for n in (src, dst)}
    return {"nodes": {n: node() for n in sorted(names)},
            "edges": [{"src": s, "dst": d, "p": p, "count": 1} for s, d, p in edges]}


def test_each_call_site_keeps_its_two_likeliest_successors_above_the_threshold() -> None:
    view = strongest_paths(graph([
        ("^#0", "a#1", 0.5), ("^#0", "b#1", 0.3), ("^#0", "c#1", 0.2),  # c: third likeliest
        ("a#1", "d#2", 0.9), ("a#1", "e#2", 0.1),  # e: below 0.15
        ("b#1", "d#2", 0.6), ("b#1", "b#1", 0.4),  # b repeats itself
        ("d#2", "a#1", 0.7),  # back to an earlier step
    ]))
    assert view.columns == [["^#0"], ["a#1", "b#1"], ["d#2"]]
    assert [(e["src"], e["dst"]) for e in view.edges] == [
        ("^#0", "a#1"), ("^#0", "b#1"), ("a#1", "d#2"), ("b#1", "d#2"), ("d#2", "a#1")]
    assert view.loops == {"b#1": 0.4}
    assert view.total_nodes == 6


def test_paths_stop_after_the_step_limit() -> None:
    chain = [(f"n#{i}", f"n#{i + 1}", 0.9) for i in range(10)]
    view = strongest_paths(graph([("^#0", "n#0", 1.0), *chain]), max_steps=3)
    assert view.columns == [["^#0"], ["n#0"], ["n#1"], ["n#2"]]
    assert len(view.edges) == 3


def test_a_graph_without_a_start_node_starts_at_its_busiest_call_site() -> None:
    g = graph([("x#1", "y#2", 0.5)])
    g["nodes"]["x#1"]["calls"] = 50.0
    assert strongest_paths(g).columns == [["x#1"], ["y#2"]]
    assert strongest_paths({"nodes": {}, "edges": []}).columns == []


def test_the_drawing_of_a_large_graph_is_written(tmp_path: Path) -> None:
    edges = [(f"t{a}#{d}", f"t{b}#{d + 1}", 1 / 6) for d in range(8) for a in range(6)
             for b in range(6)]
    edges += [("^#0", f"t{b}#0", 1 / 6) for b in range(6)]
    view = strongest_paths(graph(edges))
    assert sum(len(c) for c in view.columns) < 1 + 6 * 8  # not every call site
    path = draw_graph("big", graph(edges), tmp_path / "g.png")
    assert path.stat().st_size > 5_000
