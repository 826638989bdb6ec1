"""benchmarks/changes.py: each step's switches reach the simulator, and the table has a
row per step and the same columns for every case (its shape, not its figures)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from saga.bench.changes import (
    POLICIES,
    QUICK_CASES,
    STEPS,
    UNCAPPED_CONTEXT,
    Rules,
    cluster_under,
    markdown,
    measure,
)
from saga.bench.sections import keep_sections, kept_sections, put_section
from saga.engine.cluster import get_cluster

ROOT = Path(__file__).resolve().parents[2]


def test_the_steps_add_one_change_each_and_end_at_the_current_rules() -> None:
    flags = [dataclasses.astuple(step.rules) for step in STEPS]
    assert flags[0] == (False, False, False, False)
    for before, after in itertools.pairwise(flags):
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
        assert all(b or not a for a, b in zip(before, after, strict=True))  # cumulative
    assert flags[-1] == (True, True, True, True)
    current = get_cluster("a100-8-70b")
    assert current.engine.scheduler_reserve_full_isl  # the last row is the simulator as is
    assert current.cost_model().efficiency.attn_mfu is not None


def test_each_switch_reaches_the_cluster_and_its_cost_model() -> None:
    old = cluster_under("a100-8-70b", Rules(False, False, False, False))
    new = cluster_under("a100-8-70b", Rules(True, True, True, True))
    preset = get_cluster("a100-8-70b")
    assert (old.engine.scheduler_reserve_full_isl, new.engine.scheduler_reserve_full_isl) == (
        False, True)
    assert old.cost_model().model.max_context == UNCAPPED_CONTEXT
    assert new.cost_model().model.max_context == preset.cost_model().model.max_context
    assert old.cost_model().efficiency.attn_mfu is None  # attention at mfu, as before
    assert new.cost_model().efficiency == preset.cost_model().efficiency
    assert new.cost_model().host_link_bandwidth == preset.cost_model().host_link_bandwidth
    assert old.replicas == preset.replicas and old.name == preset.name
    # a long prefill is slower with the calibration (attention below the GEMMs' rate)
    assert new.cost_model().prefill_time(32_768) > old.cost_model().prefill_time(32_768)


def _tiny_cases() -> tuple[object, ...]:
    small = {"claude-code": {"limit": "3"}, "coding": {"count": "3"}}
    return tuple(dataclasses.replace(c, params={**c.params, **small[c.label]})
                 for c in QUICK_CASES)


@pytest.mark.timeout(300)
def test_the_quick_tables_have_a_row_per_step_and_columns_per_case() -> None:
    cases = _tiny_cases()  # the quick cases with fewer workflows: the shape is the same
    with ThreadPoolExecutor(1) as pool:
        cells = measure(cases, pool, say=lambda _: None)  # type: ignore[arg-type]
    assert set(cells) == {(s.label, c.label) for s in STEPS for c in QUICK_CASES}
    for cell in cells.values():
        assert set(cell.runs) == set(POLICIES)
    text = markdown(cells, cases, "CMD")  # type: ignore[arg-type]
    assert text.startswith("## What each change did\n")
    assert "Made by `CMD`" in text
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    main, more = tables
    assert main[0] == ("| step | change | claude-code: saga TCT (s) | vllm-affinity TCT (s) | "
                       "speedup | coding: saga TCT (s) | vllm-affinity TCT (s) | speedup |")
    assert [row.split(" | ")[0].lstrip("| ") for row in main[2:]] == [s.label for s in STEPS]
    assert [row.split(" | ")[0].lstrip("| ") for row in more[2:]] == [s.label for s in STEPS]
    assert all(row.count("|") == main[0].count("|") for row in main)
    assert all(row.count("|") == more[0].count("|") == 10 for row in more)


def test_a_kept_section_is_replaced_in_place_and_survives_a_regeneration() -> None:
    text = put_section("# Results\n\nold figures\n", "changes", "## What each change did\nA")
    assert kept_sections(text) == {
        "changes": "<!-- kept: changes -->\n## What each change did\nA\n"
                   "<!-- /kept: changes -->\n"}
    again = put_section(text + "\n## after\n", "changes", "## What each change did\nB")
    assert again.count("<!-- kept: changes -->") == 1
    assert again.index("\nB\n") < again.index("## after")  # replaced where it was
    regenerated = keep_sections(again, "# Results\n\nnew figures\n")
    assert regenerated == ("# Results\n\nnew figures\n\n<!-- kept: changes -->\n"
                           "## What each change did\nB\n<!-- /kept: changes -->\n")
    assert keep_sections(again, regenerated) == regenerated  # already there: not twice


def test_the_script_refuses_an_output_path_that_is_a_file(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("changes_script",
                                                  ROOT / "benchmarks" / "changes.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert script.main(["--quick", "--out", str(blocker)]) == 2
    assert script.main(["--quick", "--out", str(tmp_path / "d"), "--results",
                        str(tmp_path / "missing.md")]) == 2
    assert not (tmp_path / "d").exists()
