"""The gateway learns its engines' speed from the answers and ages running prefills by it
(saga.gateway.engine_speed, RemoteReplicaView.age / learn_speed)."""

from __future__ import annotations

import math

import pytest

from saga.gateway.config import GatewayConfig
from saga.gateway.engine_speed import HIGH, RATE, EngineSpeed
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.view import CallInfo


def _info(workflow: str, prompt: int, blocks: int) -> CallInfo:
    return CallInfo(workflow=workflow, tenant="t", agent="a", call_id="0", index=0, tool=None,
                    prompt_tokens=prompt, runs=((f"h:{workflow}", 0, blocks),), issued_at=0.0,
                    workflow_arrival=0.0, slo=None, ends_workflow=False)


def _view(speed: EngineSpeed | None) -> RemoteReplicaView:
    # 1 ms per uncached prompt token, 10 ms per decoded token: round figures to check
    return RemoteReplicaView(
        0, capacity_blocks=64, block_tokens=16,
        prefill_time=lambda prompt, cached: (prompt - cached - 1) / 1000,
        decode_time=lambda prompt, output: output / 100, speed=speed)


def test_the_speed_is_a_running_mean_of_log_ratios_clipped() -> None:
    speed = EngineSpeed()
    assert speed.factor == 1.0
    speed.observe(1.0, 2.0)
    assert speed.factor == pytest.approx(2.0 ** RATE)
    speed.observe(1.0, 1000.0)  # clipped to HIGH
    assert math.log(speed.factor) == pytest.approx(
        RATE * math.log(2.0) + RATE * (math.log(HIGH) - RATE * math.log(2.0)))
    for bad in ((0.0, 1.0), (1.0, 0.0), (math.inf, 1.0)):
        speed.observe(*bad)
    assert speed.samples == 2


def test_an_answer_is_compared_with_its_prefill_in_sending_order_then_its_decode() -> None:
    speed = EngineSpeed()
    view = _view(speed)
    a = GatewayCall(_info("a", 2001, 125), 8, 16, 1, 0.0)
    b = GatewayCall(_info("b", 1001, 62), 8, 16, 2, 0.0)
    assert view.try_start(a, 0.0) and view.try_start(b, 0.5)
    # a prefills 0-2 s, b after it 2-3 s; b is answered first, at 6 s, with 10 tokens
    view.finish(b, 6.0, lambda call: True)
    assert b.prefill_end == pytest.approx(3.0)
    view.learn_speed(b, 6.0, 1001, 10)
    # predicted from its slot: 3.0 - 0.5 + 0.1 = 2.6 s; it took 5.5 s
    assert speed.factor == pytest.approx((5.5 / 2.6) ** RATE)
    view.learn_speed(a, 7.0, 2001, 0)  # no usage: no sample
    assert speed.samples == 1


def test_a_slow_engine_keeps_its_running_prefills_in_the_backlog() -> None:
    plain, slow = _view(None), _view(EngineSpeed())
    assert slow.speed is not None
    for _ in range(40):
        slow.speed.observe(1.0, 3.0)
    assert slow.speed.factor == pytest.approx(3.0, rel=1e-3)
    for view in (plain, slow):
        assert view.try_start(GatewayCall(_info("a", 2001, 125), 8, 16, 1, 0.0), 0.0)
        view.age(1.5)  # predicted 2 s of prefill: 3/4 done at the model's speed
        view.check_queue_tokens()
    assert plain.backlog_tokens == 500
    assert slow.backlog_tokens == 1500  # at 3x: a quarter done


def test_the_gateway_learns_one_speed_for_its_engines_only_when_asked() -> None:
    from saga.gateway.app import Gateway

    def gateway(learn: bool) -> Gateway:
        return Gateway(GatewayConfig.model_validate({
            "policy": "saga", "cluster": "cpu-tiny", "learn_engine_speed": learn,
            "backends": [{"url": "http://127.0.0.1:9", "kind": "vllm"},
                         {"url": "http://127.0.0.1:10", "kind": "vllm"}]}))

    on = gateway(True).views
    assert on[0].speed is not None and on[0].speed is on[1].speed
    assert all(v.speed is None for v in gateway(False).views)


def test_a_move_off_its_home_is_kept_with_what_the_views_said() -> None:
    from saga.gateway.app import Gateway
    from saga.gateway.metrics import Move

    gateway = Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "cpu-tiny", "block_tokens": 16, "learn_engine_speed": True,
        "backends": [{"url": "http://127.0.0.1:9", "kind": "vllm"},
                     {"url": "http://127.0.0.1:10", "kind": "vllm"}]}))
    views = gateway.views
    assert views[0].try_start(GatewayCall(_info("w", 2001, 125), 8, 16, 1, 0.0), 0.0)
    gateway.pipeline._note_move(_info("w", 2100, 131), 0, 1, 0.5)
    assert list(gateway.metrics.moves) == [
        Move(0.5, "w", 0, 1, [2000, 0], [1, 0], [125, 0], 1.0)]
