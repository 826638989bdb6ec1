"""The gate by slots: a new workflow waits at the door while every slot is homed."""

from __future__ import annotations

from slotted import Slotted, slotted_cluster

from saga.sched.policy import CallInfo
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.saga.slot_gate import every_slot_homed
from saga.sched.view import WorkflowInfo


def test_every_slot_homed_counts_the_live_workflows_per_replica() -> None:
    both = [Slotted(0, 4), Slotted(1, 4)]
    assert every_slot_homed(both, [0] * 4 + [1] * 4)  # type: ignore[arg-type]
    assert not every_slot_homed(both, [0] * 4 + [1] * 3)  # type: ignore[arg-type]
    # an admitted workflow not placed yet takes the last free slot
    assert every_slot_homed(both, [0] * 4 + [1] * 3 + [None])  # type: ignore[arg-type]
    # a replica beyond its slots frees none elsewhere: replica 1 still has one free
    assert not every_slot_homed(both, [0] * 5 + [1] * 3)  # type: ignore[arg-type]
    assert every_slot_homed(both, [0] * 5 + [1] * 3 + [None])  # type: ignore[arg-type]


def test_every_slot_homed_never_holds_without_slots_or_workflows() -> None:
    assert not every_slot_homed([Slotted(0, None), Slotted(1, None)],  # type: ignore[arg-type]
                                [0] * 40 + [1] * 40)
    # one up replica without a count: the cluster is not compared by slots
    assert not every_slot_homed([Slotted(0, 1), Slotted(1, None)],  # type: ignore[arg-type]
                                [0, 0, 1])
    assert not every_slot_homed([Slotted(0, 0), Slotted(1, 0)], [])  # type: ignore[arg-type]
    assert not every_slot_homed([Slotted(0, 4, up=False)], [0] * 9)  # type: ignore[arg-type]


def test_a_down_replica_offers_no_slot_and_its_workflows_need_one() -> None:
    replicas = [Slotted(0, 4), Slotted(1, 4, up=False)]
    # replica 1 down: its 4 slots are gone, its 2 workflows need 2 of replica 0's 4
    assert not every_slot_homed(replicas, [0, 0, 1])  # type: ignore[arg-type]
    assert every_slot_homed(replicas, [0, 0, 1, 1])  # type: ignore[arg-type]
    # a replica without slots that is down does not turn the rule off
    assert every_slot_homed([Slotted(0, 2), Slotted(1, None, up=False)],  # type: ignore[arg-type]
                            [0, 0])


CFG = SagaConfig(colocate_slack=0.25, colocate_abs=0.0, gate_slots=True)


def _info(workflow: str, t: float = 0.0) -> WorkflowInfo:
    return WorkflowInfo(workflow, "acme", "swe", t, None)


def _call(workflow: str, t: float, index: int = 0) -> CallInfo:
    runs = (("s:sys", 0, 16), (f"w:{workflow}", 0, 40 + index))
    return CallInfo(workflow, "acme", "swe", f"{workflow}-{index}", index, None,
                    (56 + index) * 64, runs, t, 0.0, None, False)


def _start(policy: SagaPolicy, workflow: str, now: float) -> str:
    """Ask admission for ``workflow``; once admitted, its first call is placed."""
    verdict = policy.admit(_info(workflow, now), now)
    if verdict.verdict == "admit":
        call = _call(workflow, now)
        policy.on_call_ready(call, now)
        policy.place(call, now)
    return verdict.verdict


def test_the_ninth_waits_while_eight_slots_are_homed_and_enters_when_one_ends() -> None:
    policy = slotted_cluster(CFG, slots=4)[0]
    assert [_start(policy, f"w{k}", 0.25 * k) for k in range(8)] == ["admit"] * 8
    assert policy.homed_flows == [4, 4]
    held = policy.admit(_info("w8", 2.0), 2.0)
    assert held.verdict == "defer"
    assert held.reason == ("memory gate: every slot is homed by a workflow in flight; "
                           "1 workflows in the admission queue")
    assert _start(policy, "w9", 2.25) == "defer"  # behind w8 in the gate's queue
    assert policy.admit(_info("w8", 4.0), 4.0).verdict == "defer"  # nothing ended yet
    policy.on_workflow_finished(_info("w3"), 5.0)  # its end marker or the idle timeout
    assert _start(policy, "w8", 5.0) == "admit"  # first in line, the freed slot
    # w8 took the slot that w3 left: w9 waits again
    assert policy.admit(_info("w9", 5.5), 5.5).verdict == "defer"
    policy.on_workflow_finished(_info("w0"), 6.0)
    assert _start(policy, "w9", 6.0) == "admit"
    assert sorted(policy.homed_flows) == [4, 4]


def test_an_admitted_workflow_not_yet_placed_holds_its_slot() -> None:
    policy = slotted_cluster(CFG, slots=4)[0]
    for k in range(7):
        _start(policy, f"w{k}", 0.25 * k)
    assert policy.admit(_info("w7", 2.0), 2.0).verdict == "admit"  # the eighth slot
    # w7 has not called yet, but it will need that slot
    assert policy.admit(_info("w8", 2.1), 2.1).verdict == "defer"


def test_a_workflow_judged_ended_by_the_gate_gives_its_slot_back() -> None:
    policy = slotted_cluster(CFG, slots=4)[0]
    for k in range(8):
        _start(policy, f"w{k}", 0.25 * k)
    # w0's call finishes and its workflow goes silent in a tool: the other 7 still run
    policy.on_call_finished(_call("w0", 0.0), policy.flows["w0"].home or 0, 3.0)
    assert policy.admit(_info("w8", 3.0), 3.0).verdict == "defer"
    # an hour of silence: the gate judges w0 ended (its working set leaves the count)
    assert policy.admit(_info("w8", 3600.0), 3600.0).verdict == "admit"
    assert policy.flows["w0"].uncounted
    assert [f.uncounted for w, f in policy.flows.items() if w != "w0"] == [False] * 8
    # w0 calls again after all: it is counted, and every slot is homed again
    policy.on_call_ready(_call("w0", 3601.0, index=1), 3601.0)
    assert policy.admit(_info("w9", 3602.0), 3602.0).verdict == "defer"


def test_the_rule_is_a_no_op_without_slots_and_off_by_default() -> None:
    for config, slots in ((CFG, None), (SagaConfig(colocate_slack=0.25, colocate_abs=0.0), 4)):
        policy = slotted_cluster(config, slots)[0]
        verdicts = [_start(policy, f"w{k}", 0.25 * k) for k in range(12)]
        assert verdicts == ["admit"] * 12
    assert not SagaConfig().gate_slots
