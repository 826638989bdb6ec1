"""A policy in front of stock vLLM (saga.sched.stock): the gateway's decisions are the
policy's, the engine's are vLLM's defaults."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from saga.sched.decisions import RELEASE, Admission, Retention
from saga.sched.policy import CallInfo, Policy, Router, WorkflowInfo
from saga.sched.registry import build_policy
from saga.sched.stock import StockEngine, on_stock_vllm
from saga.sched.view import CallView, ReplicaView

DEFER = Admission("defer", "flow control", 0.5)


class _Replica2(Router):
    def place(self, call: CallInfo, now: float) -> int:
        return 2


class _Opinionated(Policy):
    """Every decision differs from vLLM's default, and each call is recorded."""

    name = "opinionated"
    static_order = False

    def __init__(self) -> None:
        super().__init__(_Replica2())
        self.seen: list[str] = []

    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        self.seen.append(f"admit {workflow.workflow}")
        return DEFER

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return (-1.0,)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.seen.append(f"retention {request.workflow}")
        return Retention("pin", ttl=5.0)

    def preempt_for(
        self, replica: ReplicaView, waiting: CallView, running: CallView, now: float
    ) -> bool:
        return True

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.seen.append(f"finished {call.workflow} on {replica}")


def _call(workflow: str) -> CallInfo:
    return CallInfo(workflow, "t", "coder", "c0", 0, None, 100, (), 0.0, 0.0, None, False)


def _request(workflow: str, enqueued_at: float, seq: int) -> CallView:
    return cast(CallView, SimpleNamespace(workflow=workflow, enqueued_at=enqueued_at, seq=seq))


REPLICA = cast(ReplicaView, SimpleNamespace(pins={}))


def test_gateway_decisions_and_observations_are_the_wrapped_policys() -> None:
    inner = _Opinionated()
    stock = on_stock_vllm(inner)
    assert stock.name == "opinionated"
    assert stock.admit(WorkflowInfo("w1", "t", "coder", 0.0, None), 0.0) == DEFER
    assert stock.place(_call("w1"), 0.0) == 2
    stock.on_call_finished(_call("w1"), 2, 1.0)
    assert inner.seen == ["admit w1", "finished w1 on 2"]


def test_engine_decisions_are_stock_vllms() -> None:
    inner = _Opinionated()
    stock = on_stock_vllm(inner)
    assert isinstance(stock, StockEngine)
    assert type(stock).static_order is True  # FCFS: the engine sorts only on change
    request = _request("w1", 3.5, 7)
    assert stock.queue_key(REPLICA, request, 9.0) == (3.5, 7)
    assert stock.preempt_for(REPLICA, request, _request("w2", 1.0, 1), 9.0) is False
    # the gateway still decides (and counts) its retention; the engine releases
    assert stock.retention(REPLICA, request, 9.0) == RELEASE
    assert inner.seen == ["retention w1"]


def test_sglang_keeps_its_router_and_loses_its_engine_order() -> None:
    sglang = build_policy("sglang")
    stock = cast(Any, on_stock_vllm(sglang))
    assert stock.router is sglang.router
    assert stock.name == "sglang"
    # LPM would read the replica's cache; stock vLLM's queue is first come first served
    assert stock.queue_key(REPLICA, _request("w", 2.0, 4), 0.0) == (2.0, 4)
