"""Session ends as a deployment sees them: an explicit end marker, or the idle timeout."""

from __future__ import annotations

import pytest

from saga.core.workflow import Call, EndSignal, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.gateway.config import GatewayConfig
from saga.sched.policy import CallInfo, Policy, WorkflowInfo
from saga.sched.registry import build_policy, list_policies
from saga.sched.vllm import VLLMRoundRobin
from saga.sim.simulator import SimResult, Simulation

BT = 64


class Recorder(VLLMRoundRobin):
    """vLLM's behaviour, recording what it is told and when."""

    def __init__(self) -> None:
        super().__init__()
        self.ready: list[tuple[str, bool]] = []
        self.finished_calls: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.ready.append((call.call_id, call.ends_workflow))

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.finished_calls[call.call_id] = now

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.ended[workflow.workflow] = now


def chain(end_signal: EndSignal, gap: float = 5.0) -> Workflow:
    calls = (
        Call("c0", Prompt(10 * BT, (), ((0, 10),)), 20),
        Call("c1", Prompt(12 * BT, (), ((0, 12),)), 30, ("c0",), gap, "bash"),
    )
    return Workflow("w", "t", "a", 0.0, calls, end_signal=end_signal)


def run(policy: Policy, workflows: list[Workflow], timeout: float | None = None) -> SimResult:
    return Simulation(get_cluster("test-2"), policy, workflows, end_idle_timeout=timeout).run()


def test_explicit_end_marks_the_last_call_and_ends_at_its_finish() -> None:
    rec = Recorder()
    result = run(rec, [chain("explicit")])
    assert rec.ready == [("c0", False), ("c1", True)]
    finish = result.workflows[0].finished_at
    assert rec.ended == {"w": finish} and finish == rec.finished_calls["c1"]


def test_idle_end_is_seen_after_the_timeout_since_the_last_call_was_issued() -> None:
    """The gateway's sweep: no call in flight and none issued for the timeout."""
    rec = Recorder()
    tail = Workflow("z", "t", "a", 100.0, (Call("c0", Prompt(BT, (), ((0, 1),)), 1),),
                    end_signal="explicit")  # keeps the run going past the timeout
    result = run(rec, [chain("idle"), tail], timeout=30.0)
    assert ("c1", True) not in rec.ready  # no call carries the marker
    w = next(r for r in result.workflows if r.workflow == "w")
    issued = next(c.ready_at for c in result.calls
                  if c.workflow == "w" and c.call_id == "c1")
    assert w.finished_at < issued + 30.0
    assert rec.ended["w"] == pytest.approx(issued + 30.0)
    assert w.tct == w.finished_at  # metrics keep the true finish


def test_idle_end_after_a_call_longer_than_the_timeout_comes_at_its_finish() -> None:
    rec = Recorder()
    tail = Workflow("z", "t", "a", 500.0, (Call("c0", Prompt(BT, (), ((0, 1),)), 1),),
                    end_signal="explicit")
    result = run(rec, [chain("idle"), tail], timeout=1e-3)
    w = next(r for r in result.workflows if r.workflow == "w")
    assert rec.ended["w"] == w.finished_at


def test_an_idle_end_never_prolongs_the_run() -> None:
    explicit = run(Recorder(), [chain("explicit")])
    rec = Recorder()
    idle = run(rec, [chain("idle")], timeout=600.0)
    assert idle.end == explicit.end
    assert rec.ended == {}  # nothing else happened after the finish: never seen


@pytest.mark.parametrize("policy", list_policies())
def test_every_policy_learns_an_idle_end_at_the_same_time(policy: str) -> None:
    chosen = build_policy(policy)
    seen: list[float] = []
    original = chosen.on_workflow_finished

    def spy(workflow: WorkflowInfo, now: float) -> None:
        if workflow.workflow == "w":
            seen.append(now)
        original(workflow, now)

    chosen.on_workflow_finished = spy  # type: ignore[method-assign]
    tail = Workflow("z", "t", "a", 200.0, (Call("c0", Prompt(BT, (), ((0, 1),)), 1),),
                    end_signal="explicit")
    result = run(chosen, [chain("idle", gap=1.0), tail], timeout=50.0)
    issued = next(c.ready_at for c in result.calls
                  if c.workflow == "w" and c.call_id == "c1")
    assert seen == [pytest.approx(issued + 50.0)]


def test_the_default_idle_timeout_is_the_gateways() -> None:
    assert get_cluster("small").end_idle_timeout == GatewayConfig.model_fields[
        "workflow_idle_timeout"].default == 600.0



def test_a_response_shows_a_tool_call_or_an_ended_turn_never_the_end() -> None:
    """turn_ended/next_tool as a real response shows them: the call before a human's message
    and the workflow's last call look the same."""
    seen: dict[str, tuple[bool | None, str | None]] = {}

    class Watch(VLLMRoundRobin):
        def on_call_ready(self, call: CallInfo, now: float) -> None:
            seen[call.call_id] = (call.turn_ended, call.next_tool)

    calls = (
        Call("c0", Prompt(10 * BT, (), ((0, 10),)), 20),
        Call("c1", Prompt(12 * BT, (), ((0, 12),)), 20, ("c0",), 1.0, "bash"),
        Call("c2", Prompt(14 * BT, (), ((0, 14),)), 20, ("c1",), 9.0, "human"),
    )
    run(Watch(), [Workflow("w", "t", "a", 0.0, calls)])
    assert seen == {"c0": (False, "bash"), "c1": (True, None), "c2": (True, None)}
