"""The simulator's ranking over the pairs the real runs separate (saga.bench.real_ranking)."""

from __future__ import annotations

import math

import pytest

from saga.bench.real import RealBench, render_markdown, summarize
from saga.bench.real_ranking import separated_pairs

#: 3 repetitions x 4 workflows of one policy
BASE = {f"{r}:s{w:03d}": 10.0 + 3 * w + r for r in range(3) for w in range(4)}


def _scaled(factors: list[float]) -> dict[str, float]:
    """BASE times ``factors`` in turn (one per workflow, cycling)."""
    return {k: t * factors[i % len(factors)] for i, (k, t) in enumerate(BASE.items())}


def test_a_pair_in_noise_is_a_tie_and_a_clear_pair_is_separated() -> None:
    paired = {"saga": BASE, "noisy": _scaled([1.1, 0.9]), "slow": _scaled([2.0, 1.8])}
    out = separated_pairs(paired, {"saga": 1.0, "noisy": 2.0, "slow": 3.0})
    assert out["ties"] == [["saga", "noisy"]]
    assert [(s["faster"], s["slower"], s["sim_order"]) for s in out["separated"]] == [
        ("saga", "slow", "same"), ("noisy", "slow", "same")]
    first = out["separated"][0]
    assert first["geomean"] == pytest.approx(math.sqrt(2.0 * 1.8))
    assert 1.8 <= first["ci_low"] <= first["geomean"] <= first["ci_high"] <= 2.0
    assert out["separated_same"] is True


def test_the_faster_of_a_pair_is_named_whichever_comes_first() -> None:
    paired = {"slow": _scaled([2.0]), "saga": BASE}
    out = separated_pairs(paired, {"slow": 1.0, "saga": 2.0})  # the simulator reverses it
    [pair] = out["separated"]
    assert (pair["faster"], pair["slower"]) == ("saga", "slow")
    assert pair["geomean"] == pytest.approx(2.0)
    assert pair["sim_agrees"] is False and out["separated_same"] is False
    assert pair["sim_order"] == "reversed"


def test_a_simulated_tie_of_a_separated_pair_is_not_an_agreement() -> None:
    [pair] = separated_pairs({"a": BASE, "b": _scaled([1.5])}, {"a": 1.25, "b": 1.25})[
        "separated"]
    assert (pair["faster"], pair["sim_order"], pair["sim_agrees"]) == ("a", "tied", False)


def test_a_simulated_order_inside_a_tie_is_not_a_disagreement() -> None:
    paired = {"a": BASE, "b": _scaled([1.05, 0.95]), "c": _scaled([3.0])}
    # the raw order of a and b differs, the separated pairs agree
    out = separated_pairs(paired, {"a": 2.0, "b": 1.0, "c": 5.0})
    assert out["ties"] == [["a", "b"]] and out["separated_same"] is True
    assert len(out["separated"]) == 2


def test_the_summary_and_its_markdown_carry_the_separated_pairs() -> None:
    spec = RealBench(policies=("saga", "continuum", "vllm-affinity"), repetitions=3)
    factors = {"saga": [1.0], "continuum": [2.0, 1.9], "vllm-affinity": [1.9, 2.1]}
    runs = []
    for policy, f in factors.items():
        tcts = _scaled(f)
        for rep in range(3):
            runs.append({
                "case": "memory", "policy": policy, "repetition": rep,
                "tct": {k.split(":")[1]: t for k, t in tcts.items() if k.startswith(f"{rep}:")},
                "failed": [], "calls": 4, "errors": 0, "wall": 5.0, "load": [1.0, 1.0],
                "prefix_queries": 1.0, "prefix_hits": 0.0, "retentions": {},
                "prefix_lookups": [], "backends": [0], "deferred": {}})
    sim = {"memory": {"saga": 9.0, "continuum": 20.0, "vllm-affinity": 19.0}}
    r = summarize(spec, runs, sim, quick=False, wall=1.0)["sim_ranking"]["memory"]
    assert r["same"] is False  # the raw order: the two stock policies swap
    assert r["ties"] == [["continuum", "vllm-affinity"]] and r["separated_same"] is True
    text = render_markdown(summarize(spec, runs, sim, quick=False, wall=1.0))
    assert ("over the 2 pair(s) the real runs separate the simulator agrees on 2" in text)
    assert "ties in the real runs: continuum = vllm-affinity" in text
