"""SAGA's predicted ends (sched/saga/ends.py): exact times, and the gate's accounting."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from saga.core.workflow import Call, EndSignal, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.sched.decisions import Admission
from saga.sched.policy import Policy, WorkflowInfo
from saga.sched.registry import build_policy
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.ends import EndMarkers, EndWatch, time_to_end
from saga.sched.saga.graph import AgentGraph, LogNormal
from saga.sched.saga.policy import SagaPolicy
from saga.sim.simulator import Simulation

EXACT = SagaConfig(prior_weight=0.0, depth_buckets=1, min_samples=2)
BT = 64


def learned() -> AgentGraph:
    """After a call at a#0: 6 tool calls (2 s), 3 human returns (10 s, 40 s), 1 end."""
    g = AgentGraph(EXACT)
    for _ in range(6):
        g.observe_transition("a#0", "tool#0", 2.0, 100)
    for gap in (10.0, 40.0, 10.0):
        g.observe_transition("a#0", "human#0", gap, 100)
    g.observe_end("a#0")
    return g


def test_a_response_that_invokes_a_tool_never_predicts_an_end() -> None:
    assert time_to_end(learned(), "a#0", False, 0.9) == math.inf


def test_nothing_is_predicted_before_enough_ends_were_seen() -> None:
    assert time_to_end(learned(), "a#0", True, 0.9, min_ends=2) == math.inf
    assert time_to_end(learned(), "a#0", True, 0.9, min_ends=1) < math.inf


def test_after_a_turn_ends_the_end_comes_when_a_human_return_is_unlikely() -> None:
    g = learned()
    # P(continue) 9/10, of which 3/9 human: end 0.1 against return 0.3 x S(t)
    end, back = 0.1, 0.9 * 3 / 9
    assert end / (end + back) < 0.9  # not at once
    survive = end * 0.1 / (0.9 * back)
    human = g.duration("human")
    logs = [math.log(x) for x in (10.0, 40.0, 10.0)]
    mu = sum(logs) / 3
    sigma = math.sqrt(sum((x - mu) ** 2 for x in logs) / 2)
    assert (human.mu, human.sigma) == pytest.approx((mu, sigma))
    expected = LogNormal(mu, sigma).quantile(1 - survive)
    assert time_to_end(g, "a#0", True, 0.9) == pytest.approx(expected)
    # the later the wait, the surer: a lower confidence acts sooner
    assert time_to_end(g, "a#0", True, 0.5) < expected


def test_without_the_response_type_the_whole_gap_mixture_is_used() -> None:
    g = learned()
    survive = 0.1 * 0.1 / (0.9 * 0.9)
    assert time_to_end(g, "a#0", None, 0.9) == pytest.approx(g.gap("a#0").quantile(1 - survive))


def test_a_node_no_human_ever_returned_to_ends_at_once() -> None:
    g = AgentGraph(EXACT)
    g.observe_transition("a#0", "tool#0", 2.0, 100)
    g.observe_transition("a#0", "tool#0", 2.0, 100)
    g.observe_end("a#0")
    assert time_to_end(g, "a#0", True, 0.9) == 0.0


def test_end_watch_gives_due_entries_in_time_order() -> None:
    watch = EndWatch()
    watch.watch(5.0, "b", 1)
    watch.watch(math.inf, "never", 1)
    watch.watch(3.0, "a", 2)
    assert watch.due(2.0) == []
    assert watch.due(5.0) == [("a", 2), ("b", 1)]
    assert watch.due(1e12) == []


def test_markers_say_an_agents_ends_only_if_never_missing() -> None:
    m = EndMarkers()
    assert not m.said(("t", "x"))
    m.observe(("t", "x"), True)
    assert m.said(("t", "x"))
    m.observe(("t", "x"), False)
    assert not m.said(("t", "x"))


def test_one_tenants_missing_markers_leave_anothers_alone() -> None:
    m = EndMarkers()
    m.observe(("a", "x"), True)
    m.observe(("b", "x"), False)  # a look-alike agent of another tenant, no marker
    assert m.said(("a", "x")) and not m.said(("b", "x"))


def single_calls(signal: EndSignal, count: int = 6) -> list[Workflow]:
    out = [Workflow(f"w{i}", "t", "chat", 10.0 * i,
                    (Call("c0", Prompt(20 * BT, (), ((0, 20),)), 50),), end_signal=signal)
           for i in range(count)]
    # a later workflow keeps the run going past every idle timeout
    out.append(Workflow("tail", "t", "other", 200.0,
                        (Call("c0", Prompt(BT, (), ((0, 1),)), 1),), end_signal="explicit"))
    return out


def first_end_is_enough() -> SagaPolicy:
    return SagaPolicy(SagaConfig(min_samples=1))


@pytest.mark.parametrize(("policy", "signal", "predicted"), [
    # w0's end is seen at 25 s; w3-w5 then end their turns with no human ever seen back
    (first_end_is_enough, "idle", 3),
    (lambda: build_policy("saga"), "idle", 0),  # 5 ends must be seen first
    (first_end_is_enough, "explicit", 0),  # the client says it: nothing to predict
    (lambda: build_policy("saga-no-end-prediction"), "idle", 0),
])
def test_ends_are_predicted_only_when_unsaid_and_once_ends_were_seen(
    policy: Callable[[], Policy], signal: EndSignal, predicted: int
) -> None:
    chosen = policy()
    assert isinstance(chosen, SagaPolicy)
    Simulation(get_cluster("test-2"), chosen, single_calls(signal), end_idle_timeout=25.0).run()
    assert chosen.predicted_ends == predicted


def test_a_workflow_that_returns_after_a_predicted_end_is_counted_again() -> None:
    """Turns ended by the response, then a human comes back: released and restored; once
    every workflow has ended the gate holds nothing."""
    calls = (Call("c0", Prompt(20 * BT, (), ((0, 20),)), 50),
             Call("c1", Prompt(22 * BT, (), ((0, 22),)), 50, ("c0",), 5.0, "human"),
             Call("c2", Prompt(24 * BT, (), ((0, 24),)), 50, ("c1",), 5.0, "human"))
    workflows = single_calls("idle", count=1)[:1]  # one end to learn from, seen at 25 s
    workflows += [Workflow(f"r{i}", "t", "chat", 30.0 + 3.0 * i, calls, end_signal="idle")
                  for i in range(4)]
    workflows.append(Workflow("tail", "t", "other", 200.0,
                              (Call("c0", Prompt(BT, (), ((0, 1),)), 1),),
                              end_signal="explicit"))
    policy = first_end_is_enough()
    result = Simulation(get_cluster("test-2"), policy, workflows, end_idle_timeout=25.0).run()
    assert all(w.finished_at > 0 for w in result.workflows)
    assert policy.predicted_ends > 0
    assert policy.flows == {}
    assert policy.homed_total == 0 and all(h == 0 for h in policy.homed)
    assert all(n == 0 for n in policy.unhomed.values())


def test_before_any_call_after_a_node_is_seen_a_turn_end_says_nothing_of_the_return() -> None:
    """No successor learned: the whole gap prior, not a certain end (no human seen back
    only because nothing was seen back yet)."""
    g = AgentGraph(SagaConfig(prior_weight=2.0, prior_continue=0.9, prior_tool_median=5.0,
                              prior_tool_sigma=1.0))
    survive = 0.1 * 0.5 / (0.5 * 0.9)
    expected = LogNormal(math.log(5.0), 1.0).quantile(1 - survive)
    assert time_to_end(g, "^#0", True, 0.5, min_ends=0) == pytest.approx(expected)
    assert time_to_end(g, "^#0", True, 0.5, min_ends=1) == math.inf  # no end seen yet


class _GateProbe(SagaPolicy):
    """Records the gate's working set as each probe workflow asks for admission: the
    current contexts alone (no expected growth, ``gate_growth`` none), since these tests
    are about when a workflow leaves the count."""

    def __init__(self, config: SagaConfig) -> None:
        super().__init__(config.model_copy(update={"gate_growth": "none"}))
        self.seen: list[tuple[float, float]] = []

    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        if workflow.tenant == "probe":  # before it is counted itself
            self._expire_ends(now)
            self.seen.append((now, self._working_set()))
        return super().admit(workflow, now)


def silent_then_probes() -> list[Workflow]:
    """One idle-ended single call of a never-seen agent, then a tiny explicit probe a second."""
    out = [Workflow("w0", "t", "chat", 0.0, (Call("c0", Prompt(20 * BT, (), ((0, 20),)), 50),),
                    end_signal="idle")]
    out += [Workflow(f"p{i}", "probe", "probe", float(i),
                     (Call("c0", Prompt(BT, (), ((0, 1),)), 1),), end_signal="explicit")
            for i in range(1, 41)]
    return out


@pytest.mark.parametrize("gate_ends", [0, 5])
def test_the_gate_stops_counting_a_silent_workflow_at_its_predicted_end_on_priors(
    gate_ends: int,
) -> None:
    """With no end of its agent seen, a silent workflow's working set leaves the gate's
    count once P(ended | silent t) reaches end_confidence on the graph's priors (P(continue)
    0.9, return time log-normal median 5 s, sigma 1: t = 17 s); waiting for seen ends
    (``gate_end_min_ends`` 5) holds it until the idle timeout. Pins wait either way."""
    config = SagaConfig(gate_end_min_ends=gate_ends)
    policy = _GateProbe(config)
    result = Simulation(get_cluster("test-2"), policy, silent_then_probes(),
                        end_idle_timeout=60.0).run()
    finish = next(w.finished_at for w in result.workflows if w.workflow == "w0")
    survive = 0.1 * 0.5 / (0.5 * 0.9)
    wait = LogNormal(math.log(5.0), 1.0).quantile(1 - survive) if gate_ends == 0 else math.inf
    held = 20 * BT + 50
    if gate_ends == 0:
        assert 17.0 < finish + wait < 18.0  # the probes straddle the release
    assert policy.seen == [(t, held if t < finish + wait else 0.0) for t, _ in policy.seen]
    assert [t for t, _ in policy.seen] == [float(i) for i in range(1, 41)]
    assert policy.predicted_ends == 0  # unpinned only after min_samples ends are seen


def test_once_a_user_was_seen_to_come_back_the_gate_waits_for_seen_ends() -> None:
    """The first returns after a turn ends are the short ones (the long ones have not come
    back yet): once one was seen, the gate waits for ``min_samples`` seen ends, as pins do,
    instead of acting on the prior."""
    calls = (Call("c0", Prompt(20 * BT, (), ((0, 20),)), 50),
             Call("c1", Prompt(22 * BT, (), ((0, 22),)), 50, ("c0",), 2.0, "human"))
    workflows = [Workflow("w0", "t", "chat", 0.0, calls, end_signal="idle")]
    workflows += [Workflow(f"p{i}", "probe", "probe", float(i),
                           (Call("c0", Prompt(BT, (), ((0, 1),)), 1),), end_signal="explicit")
                  for i in range(4, 41)]
    policy = _GateProbe(SagaConfig())
    Simulation(get_cluster("test-2"), policy, workflows, end_idle_timeout=60.0).run()
    assert policy.seen == [(float(i), 22 * BT + 50) for i in range(4, 41)]


def paused_in_a_tool_then_probes() -> list[Workflow]:
    """One workflow whose first response invokes a tool that runs 100 s (no end can be
    predicted: its client will call again), then a tiny explicit probe every second."""
    calls = (Call("c0", Prompt(20 * BT, (), ((0, 20),)), 50),
             Call("c1", Prompt(22 * BT, (), ((0, 22),)), 50, ("c0",), 100.0, "bash"))
    out = [Workflow("w0", "t", "chat", 0.0, calls, end_signal="idle")]
    out += [Workflow(f"p{i}", "probe", "probe", float(i),
                     (Call("c0", Prompt(BT, (), ((0, 1),)), 1),), end_signal="explicit")
            for i in range(1, 61)]
    return out


@pytest.mark.parametrize("quantile", [0.95, 0.5, None])
def test_the_gate_stops_counting_a_workflow_paused_in_a_tool_past_the_gap_quantile(
    quantile: float | None,
) -> None:
    """A silence after a response that invoked a tool predicts no end, but past
    ``gate_pause_quantile`` of the gaps after its call site (on priors: log-normal median
    5 s, sigma 1; q 0.95: 25.9 s) the gate stops counting the workflow; None holds it until
    it calls again (100 s after its first call finished)."""
    policy = _GateProbe(SagaConfig(gate_pause_quantile=quantile))
    result = Simulation(get_cluster("test-2"), policy, paused_in_a_tool_then_probes(),
                        end_idle_timeout=600.0).run()
    finish = next(c.finished_at for c in result.calls if c.call_id == "c0"
                  and c.workflow == "w0")
    pause = math.inf if quantile is None else LogNormal(math.log(5.0), 1.0).quantile(quantile)
    held = 20 * BT + 50
    assert [t for t, _ in policy.seen] == [float(i) for i in range(1, 61)]
    assert policy.seen == [(t, held if t < finish + pause else 0.0) for t, _ in policy.seen]
    if quantile == 0.95:
        assert 25.0 < finish + pause < 28.0  # the probes straddle it
    assert policy.predicted_ends == 0  # only the gate's count: no end taken, no pin dropped
    assert all(w.finished_at > 0 for w in result.workflows)


def test_a_pause_after_a_turn_ended_is_left_to_the_end_prediction() -> None:
    """The pause rule acts only after a response that invoked a tool: the same silence after
    a turn ended (a human's gap) is what the end prediction and its guards decide."""
    calls = (Call("c0", Prompt(20 * BT, (), ((0, 20),)), 50),
             Call("c1", Prompt(22 * BT, (), ((0, 22),)), 50, ("c0",), 100.0, "human"))
    workflows = [Workflow("w0", "t", "chat", 0.0, calls, end_signal="idle")]
    workflows += paused_in_a_tool_then_probes()[1:]
    # gate_end_min_ends 1: no end seen, so the gate takes no predicted end either
    config = SagaConfig(gate_pause_quantile=0.05, gate_end_min_ends=1)
    policy = _GateProbe(config)
    Simulation(get_cluster("test-2"), policy, workflows, end_idle_timeout=600.0).run()
    assert policy.seen == [(float(i), 20 * BT + 50) for i in range(1, 61)]
