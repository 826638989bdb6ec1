"""The calibration fit (saga.engine.speedfit): timings made by the cost model at known
scales give those scales back."""

from __future__ import annotations

import pytest

from saga.engine.cluster import get_cluster
from saga.engine.costmodel import DEFAULT_EFFICIENCY, CostModel
from saga.engine.hardware import get_gpu, get_model
from saga.engine.speedfit import (
    DecodePoint,
    PrefillPoint,
    SoloCall,
    fit_speed,
    fit_time_scale,
    midway,
    scaled,
)

BASE = DEFAULT_EFFICIENCY["cpu-tiny"]
MODEL, GPU = get_model("tiny-llama"), get_gpu("cpu-tiny")
CHUNK = 4096


def _points(p: float, d: float) -> tuple[list[PrefillPoint], list[DecodePoint]]:
    cost = CostModel(MODEL, GPU, 1, scaled(BASE, p, d))
    prefill = [PrefillPoint(n, cost.prefill_time(n, 0, chunk=CHUNK)) for n in (512, 2048, 6000)]
    decode = [DecodePoint(c + 1, 63, cost.decode_steps_time(1, c + 1, 63)) for c in (256, 2048)]
    return prefill, decode


@pytest.mark.parametrize(("p", "d"), [(1.0, 1.0), (0.7, 0.65), (1.3, 1.1), (0.6, 1.6)])
def test_synthetic_timings_give_their_scales_back(p: float, d: float) -> None:
    prefill, decode = _points(p, d)
    fit = fit_speed(MODEL, GPU, BASE, prefill, decode, chunk=CHUNK)
    assert fit.prefill_scale == pytest.approx(p, rel=1e-9)
    assert fit.decode_scale == pytest.approx(d, rel=1e-9)
    assert fit.efficiency.mfu == pytest.approx(BASE.mfu / p, rel=1e-9)
    assert fit.efficiency.mbu == pytest.approx(BASE.mbu / d, rel=1e-9)
    assert fit.efficiency.t_per_seq == pytest.approx(BASE.t_per_seq * d, rel=1e-9)
    # the fitted cost model predicts the timings it was fitted to
    cost = CostModel(MODEL, GPU, 1, fit.efficiency)
    for x in prefill:
        assert cost.prefill_time(x.prompt, 0, chunk=CHUNK) == pytest.approx(x.seconds, rel=1e-9)


def test_the_median_point_wins_over_an_outlier() -> None:
    prefill, decode = _points(0.8, 0.9)
    slow = [PrefillPoint(prefill[0].prompt, prefill[0].seconds * 3)]
    fit = fit_speed(MODEL, GPU, BASE, prefill + prefill[1:] + slow, decode + decode[:1],
                    chunk=CHUNK)
    assert fit.prefill_scale == pytest.approx(0.8, rel=1e-9)
    assert fit.decode_scale == pytest.approx(0.9, rel=1e-9)


def test_midway_is_the_geometric_mean_of_each_scale() -> None:
    a = fit_speed(MODEL, GPU, BASE, *_points(0.64, 0.8), chunk=CHUNK)
    b = fit_speed(MODEL, GPU, BASE, *_points(1.5625, 1.25), chunk=CHUNK)
    m = midway(BASE, a, b)
    assert (m.prefill_scale, m.decode_scale) == (pytest.approx(1.0), pytest.approx(1.0))
    assert m.efficiency.mfu == pytest.approx(BASE.mfu)


def test_a_fit_past_the_hardwares_peak_is_refused() -> None:
    prefill, decode = _points(1.0, 1.0)
    fast = [PrefillPoint(x.prompt, x.seconds / 2.5) for x in prefill]  # mfu ~1.4 > 1
    with pytest.raises(ValueError, match="mfu"):
        fit_speed(MODEL, GPU, BASE, fast, decode, chunk=CHUNK)
    with pytest.raises(ValueError, match="at least one"):
        fit_speed(MODEL, GPU, BASE, prefill, [], chunk=CHUNK)


def test_a_cluster_with_a_fitted_efficiency_uses_it() -> None:
    fit = fit_speed(MODEL, GPU, BASE, *_points(0.7, 0.6), chunk=CHUNK)
    base = get_cluster("cpu-tiny")
    fitted = base.model_copy(update={"efficiency": fit.efficiency})
    assert base.cost_model().efficiency == BASE
    assert fitted.cost_model().efficiency == fit.efficiency
    assert fitted.cost_model().prefill_time(2048) == pytest.approx(
        CostModel(MODEL, GPU, 1, fit.efficiency).prefill_time(2048))


def test_one_time_scale_from_recorded_calls() -> None:
    cost = CostModel(MODEL, GPU, 1, scaled(BASE, 0.75, 0.75))
    calls = [SoloCall(p, c, 32, cost.prefill_time(p, c, chunk=CHUNK)
                      + cost.decode_steps_time(1, p + 1, 31))
             for p, c in ((2200, 0), (2225, 2176), (5008, 3840), (600, 0))]
    assert fit_time_scale(MODEL, GPU, BASE, calls, chunk=CHUNK) == pytest.approx(0.75, rel=1e-9)
    with pytest.raises(ValueError, match="at least one"):
        fit_time_scale(MODEL, GPU, BASE, [], chunk=CHUNK)
