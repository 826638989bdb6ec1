"""Each policy's GPU prefix misses over those of its offline bound."""

from __future__ import annotations

import math

import pytest

from saga.bench.runner import eviction_ratios
from saga.bench.scenario import load_scenario, parse_scenario
from saga.errors import UserError


def test_each_policy_is_divided_by_each_of_its_bounds_in_order_else_by_belady() -> None:
    missed = {"saga": 150.0, "saga-min-eviction": 120.0, "saga-belady": 100.0,
              "belady": 50.0, "vllm-affinity": 75.0}
    ratios = eviction_ratios(missed, {"saga": ["saga-min-eviction", "saga-belady"]})
    assert ratios == {"saga": {"saga-min-eviction": 1.25, "saga-belady": 1.5},
                      "saga-min-eviction": {"belady": 2.4}, "saga-belady": {"belady": 2.0},
                      "belady": {"belady": 1.0}, "vllm-affinity": {"belady": 1.5}}
    assert list(ratios["saga"]) == ["saga-min-eviction", "saga-belady"]


def test_no_bound_run_no_ratio_and_a_zero_bound() -> None:
    assert eviction_ratios({"saga": 10.0, "sglang": 5.0}, {"saga": ["saga-belady"]}) == {}
    # a bound that was not run is left out, the others kept
    assert eviction_ratios({"saga": 10.0, "saga-belady": 5.0},
                           {"saga": ["saga-min-eviction", "saga-belady"]}) == {
        "saga": {"saga-belady": 2.0}}
    ratios = eviction_ratios({"belady": 0.0, "a": 0.0, "b": 3.0}, {})
    assert ratios["a"] == {"belady": 1.0} and ratios["belady"] == {"belady": 1.0}
    assert math.isinf(ratios["b"]["belady"])


def test_a_scenario_names_one_bound_or_a_list_and_the_belady_scenario_names_two() -> None:
    base = """
name = "x"
cluster = "test-2"
policies = ["saga", "saga-belady", "saga-min-eviction"]
[[workloads]]
name = "coding-agent"
"""
    one = parse_scenario('eviction_bounds = { saga = "saga-belady" }' + base, "x.toml")
    assert one.eviction_bounds == {"saga": ["saga-belady"]}
    with pytest.raises(UserError, match="names no bound"):
        parse_scenario("eviction_bounds = { saga = [] }" + base, "x.toml")
    assert load_scenario("belady").eviction_bounds == {
        "saga": ["saga-min-eviction", "saga-belady"]}


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
