"""The 95 % interval of a ratio of mean TCTs (saga.metrics.mean_ratio), on hand-made cells."""

from __future__ import annotations

import math

import pytest

from saga.metrics.mean_ratio import mean_ratio_interval
from saga.metrics.summary import speedup


def _session(key: str) -> str:
    return key.split(":", 1)[1]


def test_identical_policies_give_an_interval_of_exactly_one() -> None:
    tcts = {f"{rep}:s{i}": 1.0 + 3.7 * i + rep for rep in range(3) for i in range(8)}
    r = mean_ratio_interval(tcts, dict(tcts), block=_session)
    assert r == {"mean_ratio": 1.0, "mean_ci_low": 1.0, "mean_ci_high": 1.0,
                 "mean_block_ci_low": 1.0, "mean_block_ci_high": 1.0, "blocks": 8}


def test_a_constant_factor_gives_an_interval_of_exactly_that_factor() -> None:
    # a power of two: every resample's sums scale exactly, whatever the cells drawn
    candidate = {f"{rep}:s{i}": 0.5 + 1.3 * i * (rep + 1) for rep in range(3) for i in range(6)}
    baseline = {k: 4.0 * t for k, t in candidate.items()}
    r = mean_ratio_interval(baseline, candidate, block=_session)
    assert (r["mean_ratio"], r["mean_ci_low"], r["mean_ci_high"]) == (4.0, 4.0, 4.0)
    assert (r["mean_block_ci_low"], r["mean_block_ci_high"]) == (4.0, 4.0)


def test_the_interval_tracks_the_mean_ratio_where_the_geomean_differs() -> None:
    # half the sessions are long and twice as fast under the candidate, half short and
    # equal: mean ratio (10 + 1) / (5 + 1) = 1.83, geomean sqrt(2 * 1) = 1.41
    baseline = {f"0:s{i}": 10.0 if i % 2 == 0 else 1.0 for i in range(40)}
    candidate = {f"0:s{i}": 5.0 if i % 2 == 0 else 1.0 for i in range(40)}
    r = mean_ratio_interval(baseline, candidate)
    geo = speedup(baseline, candidate)
    assert r["mean_ratio"] == 11.0 / 6.0
    assert geo["geomean"] == pytest.approx(math.sqrt(2.0), rel=1e-12)
    assert r["mean_ci_low"] < 11.0 / 6.0 < r["mean_ci_high"]
    # the two intervals do not even overlap: each is the interval of its own statistic
    assert r["mean_ci_low"] > geo["ci_high"]
    # no resample can go past the ratio of the long sessions alone, nor below 1
    assert r["mean_ci_low"] > 1.0 and r["mean_ci_high"] < 2.0


def test_a_session_block_keeps_its_repetitions_together() -> None:
    # each session is 3x slower under the baseline in one repetition and 3x faster in the
    # other, its sums equal: drawn whole, every resample's ratio is exactly 1; drawn cell
    # by cell, the repetitions separate and the interval opens
    baseline, candidate = {}, {}
    for i in range(12):
        size = 1.0 + i
        baseline[f"0:s{i}"], candidate[f"0:s{i}"] = 3.0 * size, size
        baseline[f"1:s{i}"], candidate[f"1:s{i}"] = size, 3.0 * size
    r = mean_ratio_interval(baseline, candidate, block=_session)
    assert r["mean_ratio"] == 1.0 and r["blocks"] == 12
    assert (r["mean_block_ci_low"], r["mean_block_ci_high"]) == (1.0, 1.0)
    assert r["mean_ci_low"] < 0.9 and r["mean_ci_high"] > 1.1


def test_only_the_paired_cells_count_and_no_pairs_give_nan() -> None:
    r = mean_ratio_interval({"0:a": 4.0, "0:b": 100.0}, {"0:a": 2.0, "1:b": 1.0})
    assert (r["mean_ratio"], r["mean_ci_low"], r["mean_ci_high"]) == (2.0, 2.0, 2.0)
    empty = mean_ratio_interval({"0:a": 1.0}, {"1:a": 1.0}, block=_session)
    assert empty["blocks"] == 0
    assert all(math.isnan(empty[k]) for k in ("mean_ratio", "mean_ci_low", "mean_ci_high",
                                              "mean_block_ci_low", "mean_block_ci_high"))


def test_the_same_seed_gives_the_same_interval_and_the_block_one_leaves_it_alone() -> None:
    baseline = {f"{rep}:s{i}": 2.0 + (7 * i + 3 * rep) % 11 for rep in range(3) for i in range(9)}
    candidate = {f"{rep}:s{i}": 1.0 + (5 * i + rep) % 7 for rep in range(3) for i in range(9)}
    first = mean_ratio_interval(baseline, candidate, block=_session)
    assert mean_ratio_interval(baseline, candidate, block=_session) == first
    cells = mean_ratio_interval(baseline, candidate)
    assert {k: first[k] for k in cells} == cells
    other = mean_ratio_interval(baseline, candidate, block=_session, seed=1)
    assert (other["mean_ci_low"], other["mean_ci_high"]) != (first["mean_ci_low"],
                                                             first["mean_ci_high"])
