"""Slot fit: a new workflow's replicas when they keep KV in a fixed number of slots."""

from __future__ import annotations

from slotted import Slotted, indices, slotted_cluster

from saga.sched.policy import CallInfo
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.saga.slot_fit import fitting
from saga.sched.view import WorkflowInfo


def test_replicas_with_a_free_slot_are_the_only_candidates() -> None:
    both = [Slotted(0, 4), Slotted(1, 4)]
    assert indices(fitting(both, [4, 3], slack=2)) == [1]
    assert indices(fitting(both, [3, 3], slack=2)) == [0, 1]
    assert indices(fitting(both, [0, 4], slack=2)) == [0]


def test_when_every_slot_is_taken_the_overflow_packs_where_it_already_is() -> None:
    both = [Slotted(0, 4), Slotted(1, 4)]
    assert indices(fitting(both, [4, 4], slack=2)) == [0, 1]  # none beyond yet: any
    assert indices(fitting(both, [5, 4], slack=2)) == [0]  # 6 against 4: within 2
    assert indices(fitting(both, [4, 5], slack=2)) == [1]
    # 7 against 4 would pass the slack: any replica (placement's own rule then)
    assert indices(fitting(both, [6, 4], slack=2)) == [0, 1]
    # slack 1: never pack beyond the least loaded plus one
    assert indices(fitting(both, [5, 4], slack=1)) == [0, 1]
    # both beyond their slots: the one that stays within the slack of the least
    assert indices(fitting(both, [6, 5], slack=2)) == [0, 1]
    assert indices(fitting(both, [7, 5], slack=2)) == [1]


def test_slot_counts_differ_per_replica() -> None:
    mixed = [Slotted(0, 2), Slotted(1, 8)]
    assert indices(fitting(mixed, [2, 7], slack=2)) == [1]
    # replica 1 has no slot left but is not beyond its 8: the overflow stays on 0
    assert indices(fitting(mixed, [3, 8], slack=2)) == [0]
    assert indices(fitting(mixed, [3, 8], slack=1)) == [0]


def test_replicas_without_slots_are_left_as_they_are() -> None:
    assert indices(fitting([Slotted(0, None), Slotted(1, None)], [9, 0], slack=2)) == [0, 1]
    # one replica without a count: the cluster is not compared by slots
    assert indices(fitting([Slotted(0, 4), Slotted(1, None)], [4, 0], slack=2)) == [0, 1]
    assert fitting([], [], slack=2) == []


def _first_call(workflow: str, t: float) -> CallInfo:
    runs = (("s:sys", 0, 16), (f"w:{workflow}", 0, 40))
    return CallInfo(workflow, "acme", "swe", f"{workflow}-0", 0, None, 56 * 64, runs, t, 0.0,
                    None, False)


def _place_new(policy: SagaPolicy, count: int) -> list[int]:
    homes = []
    for k in range(count):
        now = 0.25 * k
        call = _first_call(f"w{k}", now)
        policy.on_call_ready(call, now)
        homes.append(policy.place(call, now))
    return homes


CFG = SagaConfig(colocate_slack=0.25, colocate_abs=0.0)


def test_ten_workflows_on_two_replicas_of_four_slots_fill_the_slots_first() -> None:
    policy, _ = slotted_cluster(CFG, slots=4)  # slot_fit_slack 1 (the default): no packing
    homes = _place_new(policy, 10)
    assert homes[:8].count(0) == 4 and homes[:8].count(1) == 4  # the slots first
    assert policy.homed_flows == [5, 5]  # then placement's own rule: the working sets


def test_with_slack_two_the_overflow_packs_onto_one_replica() -> None:
    policy, _ = slotted_cluster(CFG.model_copy(update={"slot_fit_slack": 2}), slots=4)
    homes = _place_new(policy, 10)
    assert homes[:8].count(0) == 4 and homes[:8].count(1) == 4
    assert homes[8] == homes[9]  # the overflow on one replica: 4 and 6
    assert policy.homed_flows == sorted([4, 6], reverse=homes[8] == 0)


def test_without_slots_or_without_slot_fit_the_workflows_spread_as_before() -> None:
    spread = _place_new(slotted_cluster(CFG, slots=None)[0], 10)
    assert spread.count(0) == 5 and spread.count(1) == 5
    off = CFG.model_copy(update={"slot_fit": False})
    assert _place_new(slotted_cluster(off, slots=4)[0], 10) == spread


def test_an_ended_workflow_gives_its_slot_back() -> None:
    policy, _ = slotted_cluster(CFG, slots=4)
    homes = _place_new(policy, 8)
    first_on_zero = f"w{homes.index(0)}"
    policy.on_workflow_finished(WorkflowInfo(first_on_zero, "acme", "swe", 0.0, None), 5.0)
    assert policy.homed_flows == [3, 4]
    call = _first_call("late", 5.0)
    policy.on_call_ready(call, 5.0)
    assert policy.place(call, 5.0) == 0  # the only free slot
