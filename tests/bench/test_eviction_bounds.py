"""Each policy's GPU prefix misses over those of its offline bound."""

from __future__ import annotations

import math

import pytest

from saga.bench.runner import eviction_ratios
from saga.bench.scenario import parse_scenario
from saga.errors import UserError


def test_each_policy_is_divided_by_its_own_bound_else_by_belady() -> None:
    missed = {"saga": 150.0, "saga-belady": 100.0, "belady": 50.0, "vllm-affinity": 75.0}
    bounds, ratios = eviction_ratios(missed, {"saga": "saga-belady"})
    assert bounds == {"saga": "saga-belady", "saga-belady": "belady", "belady": "belady",
                      "vllm-affinity": "belady"}
    assert ratios == {"saga": 1.5, "saga-belady": 2.0, "belady": 1.0, "vllm-affinity": 1.5}


def test_no_bound_run_no_ratio_and_a_zero_bound() -> None:
    assert eviction_ratios({"saga": 10.0, "sglang": 5.0}, {"saga": "saga-belady"}) == ({}, {})
    bounds, ratios = eviction_ratios({"belady": 0.0, "a": 0.0, "b": 3.0}, {})
    assert bounds == {"belady": "belady", "a": "belady", "b": "belady"}
    assert ratios["a"] == 1.0 and ratios["belady"] == 1.0 and math.isinf(ratios["b"])


def test_a_scenario_names_only_bounds_it_runs() -> None:
    text = """
name = "x"
cluster = "test-2"
policies = ["saga", "belady"]
eviction_bounds = { saga = "saga-belady" }
[[workloads]]
name = "coding-agent"
"""
    with pytest.raises(UserError, match="'saga-belady' must both be among policies"):
        parse_scenario(text, "x.toml")
