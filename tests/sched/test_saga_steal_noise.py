"""steal_noise: the winner's-curse steal share and the measured spread of predictions."""

from __future__ import annotations

import math

import pytest

from saga.sched.saga import SagaConfig
from saga.sched.saga.placement import Estimate, pick
from saga.sched.saga.steal_noise import (
    CLIP,
    MIN_SAMPLES,
    PredictionNoise,
    expected_max_normal,
    steal_share,
)


def test_expected_max_of_normals_matches_the_closed_forms() -> None:
    assert expected_max_normal(0) == 0.0
    assert expected_max_normal(1) == 0.0
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
    assert expected_max_normal(3) == pytest.approx(3 / (2 * math.sqrt(math.pi)), abs=1e-9)
    # tabulated (Tippett 1925): the best of 15 rivals on a 16-replica fleet
    assert expected_max_normal(15) == pytest.approx(1.7359, abs=1e-4)


def test_one_rival_or_no_noise_is_the_flat_margin_exactly() -> None:
    assert steal_share(0.15, 0.7, 1) == 0.15
    assert steal_share(0.15, 0.0, 15) == 0.15
    assert steal_share(0.0, 0.0, 15) == 0.0


def test_the_share_grows_with_rivals_and_noise_and_stays_below_one() -> None:
    want = 1.0 - 0.85 * math.exp(-0.5 * 3 / (2 * math.sqrt(math.pi)))
    assert steal_share(0.15, 0.5, 3) == pytest.approx(want, abs=1e-9)
    shares = [steal_share(0.15, 0.5, k) for k in (1, 2, 3, 7, 15)]
    assert shares == sorted(shares) and shares[0] < shares[-1]
    assert steal_share(0.15, 0.2, 15) < steal_share(0.15, 0.5, 15) < 1.0
    # the widest spread PredictionNoise can measure (log ratios clipped to CLIP e-folds)
    assert steal_share(0.15, CLIP, 15) < 1.0


def test_pick_steals_by_the_share_it_is_given() -> None:
    config = SagaConfig(steal_margin=0.15, steal_min_gain=0.5, steal_imposed=False)
    # home 10 s, the best rival 7 s: a 30 % gain
    estimates = [Estimate(0, 10.0, 0.0), Estimate(1, 7.0, 0.0), Estimate(2, 8.0, 0.0)]
    homed = [0.0, 0.0, 0.0]
    assert pick(estimates, 0, homed, config).replica == 1  # flat 15 %: steal
    assert pick(estimates, 0, homed, config, 0.29).replica == 1
    assert pick(estimates, 0, homed, config, 0.3).replica == 0  # not more than 30 %: stay
    assert pick(estimates, 0, homed, config, steal_share(0.15, 0.5, 2)).replica == 0


def test_the_noise_is_the_spread_of_log_ratios_once_enough_are_seen() -> None:
    noise = PredictionNoise(window=1000)
    for i in range(MIN_SAMPLES - 1):
        noise.observe(math.exp(0.2 if i % 2 else -0.2), 1.0)
    assert noise.sigma == 0.0  # too few: today's rule
    noise.observe(math.exp(0.2), 1.0)
    # equal counts of +-0.2 (a bias common to every prediction would not count): sd 0.2
    assert noise.sigma == pytest.approx(0.2, abs=1e-9)
    assert noise.mean == pytest.approx(0.0, abs=1e-9)
    noise.observe(0.0, 1.0)  # a call that never ran, or no prediction: skipped
    noise.observe(1.0, 0.0)
    assert noise.count == MIN_SAMPLES


def test_an_outlier_counts_as_clipped_and_old_calls_fade() -> None:
    noise = PredictionNoise(window=2)
    noise.observe(1.0, 1.0)
    noise.observe(math.exp(40.0), 1.0)  # clipped to CLIP e-folds
    assert noise.mean == pytest.approx(CLIP / 2) and noise.var == pytest.approx(CLIP**2 / 4)
    for _ in range(200):  # a window of 2 calls: the outlier is forgotten
        noise.observe(1.0, 1.0)
    assert noise.mean == pytest.approx(0.0, abs=1e-9) and noise.var == pytest.approx(0.0, abs=1e-9)
