"""The Gittins-like queue rank (saga/gittins.py) on hand-built session-length distributions,
and queue_order="gittins" in the policy."""

from __future__ import annotations

import pytest

from saga.engine.replica import Request
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.gittins import (
    Lengths,
    SessionLengths,
    heavy_tailed,
    kaplan_meier,
    rank,
    squared_cv,
)
from saga.sched.saga.policy import SagaPolicy


def _alike(sizes: list[float]) -> Lengths:
    """Each length equally likely (4 of them: masses of 1/4, exact in binary)."""
    return Lengths.of(sizes, [1.0 / len(sizes)] * len(sizes), 0.0)


def test_decreasing_hazard_ranks_the_young_session_first() -> None:
    # half the sessions end after 1 s, half after 100 s: one that ran past 1 s is long
    sizes = _alike([1.0, 1.0, 100.0, 100.0])
    # at 0: q = 1 costs E[min(X, 1)] = 1 for P = 1/2 -> 2; q = 100 costs 50.5 for P = 1
    assert rank(sizes, 0.0) == 2.0
    # at 1.5 only the 100 s sessions survive: 98.5 s left for certain
    assert rank(sizes, 1.5) == 98.5
    assert rank(sizes, 0.0) < rank(sizes, 1.5)  # type: ignore[operator]


def test_increasing_hazard_ranks_the_oldest_session_first() -> None:
    # lengths alike: the longer a session ran, the sooner it ends
    sizes = _alike([8.0, 10.0, 12.0, 14.0])
    # at 0 the best q is the whole length: the mean, 11 (q = 8: 32, 10: 19, 12: 14)
    assert rank(sizes, 0.0) == 11.0
    # at 9 the residuals are 1, 3, 5: q = 1 costs 3 for P = 1/3 -> 3, q = 5 costs 3 -> 3
    assert rank(sizes, 9.0) == 3.0
    assert rank(sizes, 9.0) < rank(sizes, 0.0)  # type: ignore[operator]


def test_no_rank_for_a_session_longer_than_every_learned_one() -> None:
    assert rank(Lengths.of([8.0, 10.0], [0.5, 0.5], 0.0), 10.0) is None
    assert rank(Lengths.of([], [], 0.0), 0.0) is None
    # mass beyond the last ended length ends within no q: no rank either
    assert rank(Lengths.of([8.0], [0.5], 0.5), 9.0) is None


def test_running_sessions_count_as_at_least_the_work_they_received() -> None:
    # two ended after 1 s, two still running at 5 s: half the mass is beyond every end
    fitted = kaplan_meier([1.0, 1.0], [5.0, 5.0])
    assert (fitted.points, fitted.mass_prefix, fitted.tail) == ((1.0, 1.0), (0.0, 0.25, 0.5), 0.5)
    # q = 1 invests 1 s in every session for a chance of 1/2 of ending: 2 (1 if ended only)
    assert rank(fitted, 0.0) == 2.0
    assert rank(kaplan_meier([1.0, 1.0], []), 0.0) == 1.0
    # a censoring between two ends moves its mass to the longer: 1/3 at 2, 2/3 at 6
    fitted = kaplan_meier([2.0, 6.0], [4.0])
    assert fitted.points == (2.0, 6.0)
    assert fitted.mass_prefix == pytest.approx((0.0, 1 / 3, 1.0))
    assert fitted.tail == 0.0


def test_session_lengths_keep_a_sliding_window_per_agent_type() -> None:
    lengths = SessionLengths(window=2)
    for length in (5.0, 1.0, 3.0):  # 5 slides out
        lengths.observe(("t", "a"), length)
    lengths.observe(("t", "b"), 40.0)
    assert (lengths.seen(("t", "a")), lengths.seen(("t", "b")), lengths.seen(("u", "a"))) == (
        2, 1, 0)
    # over [1, 3] at 0: q = 1 invests 1 + 1 per session ended (one) -> 2; q = 3: 4 / 2
    assert lengths.rank(("t", "a"), 0.0) == 2.0
    assert lengths.rank(("t", "a"), 2.0) == 1.0  # only 3 survives: 1 s left
    assert lengths.rank(("t", "b"), 0.0) == 40.0
    assert lengths.rank(("u", "a"), 0.0) is None
    lengths.observe(("t", "a"), 1.0)  # 1 (the older) slides out, 1 comes in: [1, 3]
    assert lengths.rank(("t", "a"), 2.0) == 1.0


def _queued(policy: SagaPolicy, workflow: str, attained: float, rest: float,
            seq: int) -> Request:
    flow = policy._flow(WorkflowInfo(workflow, "t", "a", 0.0, None))
    flow.attained, flow.rest = attained, rest
    flow.priority = policy._queue_priority(flow, 5.0)
    info = CallInfo(
        workflow=workflow, tenant="t", agent="a", call_id="c0", index=0, tool=None,
        prompt_tokens=640, runs=((f"w:{workflow}", 0, 10),), issued_at=0.0,
        workflow_arrival=0.0, slo=None, ends_workflow=False,
    )
    request = Request(workflow, "c0", info.runs, info.prompt_tokens, 100, 64, seq)
    request.info = info
    return request


def _order(sizes: list[float], min_sessions: int = 4,
           heavy_only: bool = False) -> tuple[list[str], float, float]:
    """Queue order of an old session (120 s received, 3 s expected left) and a young one
    (2 s received, 90 s expected left) once ``sizes`` were learned."""
    from saga.core.workflow import Call, Prompt, Workflow
    from saga.engine.cluster import get_cluster
    from saga.sim.simulator import Simulation

    order = "gittins_heavy_tailed" if heavy_only else "gittins"
    policy = SagaPolicy(SagaConfig(queue_order=order, fit_first_wait=None,
                                   gittins_min_sessions=min_sessions))
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    Simulation(get_cluster("test-2"), policy, [dummy])  # binds the policy
    for size in sizes:
        policy.session_lengths.observe(("t", "a"), size)
    old = _queued(policy, "old", 120.0, 3.0, 1)
    young = _queued(policy, "young", 2.0, 90.0, 2)
    queued = sorted((old, young), key=lambda r: policy.queue_key(None, r, 0.0))  # type: ignore[arg-type]
    return ([r.workflow for r in queued], policy.flows["old"].priority,
            policy.flows["young"].priority)


def test_gittins_order_follows_the_learned_hazard() -> None:
    # heavy tail: most sessions end within 10 s, the rest run 1,000 s
    # young (2 s in): residuals 2, 4, 6, 8, 998, 998; q = 8 invests 2 + 4 + 6 + 8 + 2 * 8
    # for 4 ends -> 9 (q = 2: 12, 4: 11, 6: 10, 998: 336); old (120 s in): 880 s left
    assert _order([4.0, 6.0, 8.0, 10.0, 1000.0, 1000.0]) == (
        ["young", "old"], pytest.approx(880.0), pytest.approx(9.0))
    # alike: every session runs 121-127 s; old (120 s in): residuals 1, 3, 5, 7 -> 4 (q = 1
    # and q = 7); young (2 s in): the mean residual, 122
    assert _order([121.0, 123.0, 125.0, 127.0]) == (
        ["old", "young"], pytest.approx(4.0), pytest.approx(122.0))


def test_gittins_order_falls_back_to_remaining_work_until_enough_sessions_ended() -> None:
    # 3 sessions learned, 4 needed: remaining work plus the call's own 5 s, as remaining
    assert _order([121.0, 123.0, 125.0], min_sessions=4) == (["old", "young"], 8.0, 95.0)
    # older than every learned session: remaining work too
    assert _order([4.0, 6.0, 8.0, 10.0], min_sessions=4)[1] == 8.0


def test_a_session_length_is_learned_when_the_gateway_sees_it_end() -> None:
    from saga.core.workflow import Call, Prompt, Workflow
    from saga.engine.cluster import get_cluster
    from saga.sim.simulator import Simulation

    attained: dict[str, float] = {}

    class Watched(SagaPolicy):
        def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
            flow = self.flows.get(workflow.workflow)
            if flow is not None:
                attained[workflow.workflow] = flow.attained
            super().on_workflow_finished(workflow, now)

    def session(name: str, calls: int) -> Workflow:
        return Workflow(name, "t", "a", 0.0, tuple(
            Call(f"c{i}", Prompt(640 * (i + 1)), 20, after=(f"c{i - 1}",) if i else (),
                 gap=1.0 if i else 0.0)
            for i in range(calls)), end_signal="explicit")  # seen to end at its last call

    policy = Watched(SagaConfig(queue_order="gittins"))
    Simulation(get_cluster("test-2"), policy, [session("s", 2), session("l", 4)]).run()
    assert set(attained) == {"s", "l"}
    assert policy.session_lengths.seen(("t", "a")) == 2
    assert policy.session_lengths._sorted[("t", "a")] == sorted(attained.values())
    assert attained["s"] < attained["l"]


def test_the_policy_censors_its_agent_types_running_sessions_at_an_end() -> None:
    from saga.core.workflow import Call, Prompt, Workflow
    from saga.engine.cluster import get_cluster
    from saga.sim.simulator import Simulation

    policy = SagaPolicy(SagaConfig(queue_order="gittins"))
    dummy = Workflow("d", "t", "a", 0.0, (Call("c0", Prompt(64), 1),))
    Simulation(get_cluster("test-2"), policy, [dummy])  # binds the policy
    for name, agent, attained in (("ends", "a", 10.0), ("runs", "a", 50.0),
                                  ("other", "b", 5.0)):
        policy._flow(WorkflowInfo(name, "t", agent, 0.0, None)).attained = attained
    policy.on_workflow_finished(WorkflowInfo("ends", "t", "a", 0.0, None), 100.0)
    fitted = policy.session_lengths._fitted[("t", "a")]
    # "runs" (same agent type, 50 s so far) is censored; "other" (another type) is not
    assert (fitted.points, fitted.mass_prefix, fitted.tail) == ((10.0,), (0.0, 0.5), 0.5)


def test_the_best_quantum_is_short_when_young_and_whole_when_lengths_are_alike() -> None:
    # decreasing hazard, young: q = 1 (not to the longest length)
    assert rank(_alike([1.0, 1.0, 100.0, 100.0]), 0.0) == 2.0
    # increasing hazard: q = 14, the whole residual (the mean, 11)
    assert rank(_alike([8.0, 10.0, 12.0, 14.0]), 0.0) == 11.0
    # a tie between q = 1 and q = 5 (both 3) gives 3
    assert rank(_alike([8.0, 10.0, 12.0, 14.0]), 9.0) == 3.0


def test_squared_cv_of_the_learned_lengths() -> None:
    # lengths alike: mean 11, second moment 126, variance 5
    assert squared_cv(_alike([8.0, 10.0, 12.0, 14.0])) == pytest.approx(5.0 / 121.0)
    # three short, one long: mean 25.75, variance 1,837.6875
    assert squared_cv(_alike([1.0, 1.0, 1.0, 100.0])) == pytest.approx(1837.6875 / 663.0625)
    # half at 1 s, half at 100 s: mean 50.5, variance 2,450.25, just under an exponential's
    assert squared_cv(_alike([1.0, 1.0, 100.0, 100.0])) == pytest.approx(2450.25 / 2550.25)
    # with nowhere to put it the mass beyond the last point is left out: [2, 6] at 1/2 each
    assert squared_cv(Lengths.of([2.0, 6.0], [0.25, 0.25], 0.5)) == pytest.approx(0.25)
    assert squared_cv(Lengths.of([], [], 1.0)) is None
    # else at the longest running session's work: 2 and 6 at 1/4, 20 at 1/2 (mean 12,
    # second moment 210)
    assert squared_cv(Lengths.of([2.0, 6.0], [0.25, 0.25], 0.5, 20.0)) == pytest.approx(
        66.0 / 144.0)
    # Kaplan-Meier puts it there: two ended after 1 s, running sessions at 5 s and 9 s
    fitted = kaplan_meier([1.0, 1.0], [5.0, 9.0])
    assert (fitted.tail, fitted.tail_at) == (0.5, 9.0)
    assert kaplan_meier([1.0, 4.0], [2.0]).tail_at == 0.0  # the last mark an end: no tail


def test_heavy_tailed_is_a_squared_cv_above_an_exponentials() -> None:
    assert heavy_tailed(_alike([1.0, 1.0, 1.0, 100.0]))
    assert not heavy_tailed(_alike([1.0, 1.0, 100.0, 100.0]))
    assert not heavy_tailed(_alike([8.0, 10.0, 12.0, 14.0]))
    assert not heavy_tailed(Lengths.of([], [], 1.0))
    lengths = SessionLengths(window=8)
    assert not lengths.heavy_tailed(("t", "a"))  # nothing learned
    for length in (1.0, 1.0, 1.0, 100.0):
        lengths.observe(("t", "a"), length)
    assert lengths.heavy_tailed(("t", "a"))
    lengths.observe(("t", "a"), 100.0)  # [1, 1, 1, 100, 100]: squared CV 1.43
    assert lengths.heavy_tailed(("t", "a"))
    lengths.observe(("t", "a"), 100.0)  # [1, 1, 1, 100, 100, 100]: 0.96, refitted
    assert not lengths.heavy_tailed(("t", "a"))


def test_heavy_tailed_order_ranks_by_gittins_where_lengths_are_heavy_tailed() -> None:
    # heavy tail (squared CV 1.92): the Gittins rank, young first, as without the switch
    heavy = [4.0, 6.0, 8.0, 10.0, 1000.0, 1000.0]
    assert _order(heavy, heavy_only=True) == _order(heavy) == (
        ["young", "old"], pytest.approx(880.0), pytest.approx(9.0))
    # alike (squared CV 0.0005): remaining work plus the call's own 5 s, as by default
    alike = [121.0, 123.0, 125.0, 127.0]
    assert _order(alike, heavy_only=True) == (["old", "young"], 8.0, 95.0)
    assert _order(alike) == (["old", "young"], pytest.approx(4.0), pytest.approx(122.0))


def test_the_heavy_tailed_order_is_the_default() -> None:
    assert SagaConfig().queue_order == "gittins_heavy_tailed"  # docs/saga.md, ninth session


def test_heavy_tailed_order_learns_session_lengths_as_gittins() -> None:
    from saga.core.workflow import Call, Prompt, Workflow
    from saga.engine.cluster import get_cluster
    from saga.sim.simulator import Simulation

    session = Workflow("s", "t", "a", 0.0, (Call("c0", Prompt(640), 20),),
                       end_signal="explicit")
    policy = SagaPolicy(SagaConfig(queue_order="gittins_heavy_tailed"))
    Simulation(get_cluster("test-2"), policy, [session]).run()
    assert policy.session_lengths.seen(("t", "a")) == 1
