"""RESULTS.md: goodput capacity first, then the loads the TCT figures were taken at."""

from __future__ import annotations

from typing import Any

from saga.bench.report import results_markdown


def capacity_summary() -> dict[str, Any]:
    return {
        "scenario": "capacity", "kind": "capacity", "reference": "saga", "quick": True,
        "policy_order": ["saga", "vllm-affinity", "sglang", "saga-no-gate"],
        "goodput": {"slowdown": 2.0, "target": 0.9, "tolerance": 0.05},
        "capacity_cases": [{
            "workload": "coding", "source": "coding-agent", "cluster": "paper-a100-64",
            "params": {"count": "200", "max_calls": "60", "rate": "0.04"},
            "seeds": [0, 1], "workflows_per_seed": 200,
            "capacity": {"saga": 0.06, "vllm-affinity": 0.02, "sglang": 0.04,
                         "saga-no-gate": 0.05},
            "capacity_ratio": {"saga/vllm-affinity": 3.0, "saga/sglang": 1.5,
                               "saga/saga-no-gate": 1.2},
            "bracketed": {"saga": False, "vllm-affinity": True, "sglang": True,
                          "saga-no-gate": True},
            "limited": {"saga": True, "vllm-affinity": False, "sglang": False,
                        "saga-no-gate": False},
        }],
    }


def paper_summary() -> dict[str, Any]:
    case = {
        "name": "coding@70%", "workload": "coding-agent", "cluster": "paper-a100-64", "seed": 0,
        "params": {"count": "300", "max_calls": "60"},
        "offered_load": {"rate": 0.03, "of_peak": 0.7, "peak_policy": "throughput"},
        "busy_share": {"saga": 0.5, "vllm-affinity": 0.625},
    }
    return {
        "scenario": "paper", "kind": "compare", "reference": "saga", "quick": True,
        "primary_case": "coding@70%", "cases": [case],
        "policies": {"saga": {"kv_utilization": 0.5, "kv_useful_utilization": 0.45},
                     "vllm-affinity": {"kv_utilization": 0.4, "kv_useful_utilization": 0.3}},
        "speedup": {},
    }


def test_capacity_comes_first_with_its_ratios_and_the_best_other_baseline() -> None:
    text = results_markdown([paper_summary(), capacity_summary()], "saga bench all")
    assert text.index("## Goodput capacity") < text.index("## Headline")
    assert "| capacity saga / vllm-affinity (goal 2.0x) | 3.00x | coding on paper-a100-64 |" in text
    # the best other baseline is the highest capacity but SAGA's own ablations
    assert ("| capacity saga / best other baseline (sglang) (goal 1.3x) | 1.50x | "
            "coding on paper-a100-64 |") in text
    assert "| saga | ≥ 0.06 | n/a |" in text
    assert "| vllm-affinity | 0.02 | 3.00x |" in text
    assert "## capacity" not in text  # no empty per-scenario section for it


def test_loads_are_stated_over_vllm_affinity_capacity_when_measured() -> None:
    text = results_markdown([capacity_summary(), paper_summary()], "saga bench all")
    assert text.index("## Headline") < text.index("## Loads of the TCT figures")
    stated = "0.03 wf/s = 1.50x vllm-affinity's goodput capacity (0.02 wf/s)"
    assert f"| paper | coding@70% | {stated} | saga 50.0 %, vllm-affinity 62.5 % |" in text
    assert f"Offered load: {stated}; busy share saga 50.0 %, vllm-affinity 62.5 %." in text
    # the memory headline takes the useful utilization: 0.45 / 0.3
    assert "| useful KV memory utilization vs vllm-affinity | 1.22x | 1.50x | paper |" in text


def test_without_a_capacity_run_the_load_is_over_the_peak() -> None:
    text = results_markdown([paper_summary()], "saga bench all")
    assert "## Goodput capacity" not in text
    assert "0.03 wf/s = 70 % of `throughput`'s closed-loop peak" in text


def test_a_capacity_of_other_workflows_is_no_basis() -> None:
    paper = paper_summary()
    paper["cases"][0]["params"] = {"count": "300", "max_calls": "30"}  # shorter workflows
    text = results_markdown([capacity_summary(), paper], "saga bench all")
    assert "0.03 wf/s = 70 % of `throughput`'s closed-loop peak" in text
    assert "goodput capacity (0.02" not in text


def test_the_best_other_baseline_includes_variants_of_vllm_affinity() -> None:
    summary = capacity_summary()
    case = summary["capacity_cases"][0]
    case["capacity"]["vllm-affinity+gate"] = 0.05
    case["capacity_ratio"]["saga/vllm-affinity+gate"] = 1.2
    case["capacity_ratio"]["saga/belady"] = 0.5  # an offline bound is no baseline
    text = results_markdown([summary], "saga bench all")
    assert ("| capacity saga / best other baseline (vllm-affinity+gate) (goal 1.3x) | 1.20x | "
            "coding on paper-a100-64 |") in text


def test_the_tct_headline_best_other_excludes_exactly_vllm_affinity() -> None:
    speedup = {"saga/vllm-affinity": {"geomean": 1.1},
               "saga/vllm-affinity+priority": {"geomean": 1.4},
               "saga/sglang": {"geomean": 1.6},
               "saga/saga-no-gate": {"geomean": 1.05},
               "saga/belady": {"geomean": 0.9}}
    claude = {"scenario": "claude-code", "kind": "compare", "reference": "saga", "quick": True,
              "cases": [], "policies": {}, "speedup": speedup}
    text = results_markdown([claude], "saga bench all")
    assert ("| TCT vs the best other baseline (vllm-affinity+priority), claude-code | "
            "goal 1.25x | 1.40x") in text
    assert "| TCT vs vllm-affinity, real Claude Code sessions | - | 1.10x" in text
