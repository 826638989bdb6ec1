"""Slots in steals: a workflow moves off home only to a replica with a slot free."""

from __future__ import annotations

from slotted import Slotted, indices

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.kvcache import Run
from saga.engine.replica import Replica, Request
from saga.sched.policy import CallInfo, PolicyContext
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.saga.slot_fit import steal_targets


def test_steal_targets_keep_home_and_the_replicas_with_a_free_slot() -> None:
    three = [Slotted(0, 4), Slotted(1, 4), Slotted(2, 2)]
    assert indices(steal_targets(three, 0, [6, 4, 1])) == [0, 2]  # type: ignore[arg-type]
    assert indices(steal_targets(three, 0, [6, 3, 2])) == [0, 1]  # type: ignore[arg-type]
    assert indices(steal_targets(three, 1, [4, 5, 2])) == [1]  # type: ignore[arg-type]
    # home is kept however many it homes
    assert indices(steal_targets(three, 2, [0, 0, 9])) == [0, 1, 2]  # type: ignore[arg-type]


def test_steal_targets_leave_replicas_without_slots_as_they_are() -> None:
    none = [Slotted(0, None), Slotted(1, None)]
    assert steal_targets(none, 0, [9, 9]) is none  # type: ignore[arg-type]
    mixed = [Slotted(0, 1), Slotted(1, None)]
    assert steal_targets(mixed, 0, [3, 3]) is mixed  # type: ignore[arg-type]


BT = 64
CFG = SagaConfig(steal_margin=0.15, steal_min_gain=0.5, colocate_slack=0.25, colocate_abs=0.0,
                 steal_slots=True)


def _call(workflow: str, index: int, runs: tuple[Run, ...], t: float) -> CallInfo:
    tokens = sum(r[2] for r in runs) * BT
    return CallInfo(workflow, "acme", "swe", f"{workflow}{index}", index,
                    "bash" if index else None, tokens, runs, t, 0.0, None, False)


def _overloaded_home(config: SagaConfig, slots: int | None) -> tuple[SagaPolicy, int]:
    """Workflow ``a`` homed on replica 0 under 6 x 100k tokens of queued prefill, ``b``
    homed on replica 1 (in its tool); where ``a``'s next call goes."""
    cost = cost_model_for("llama-3.1-8b", "h100-sxm", 1)
    policy = SagaPolicy(config)
    engine = EngineConfig(max_num_batched_tokens=8192, max_num_seqs=64)
    replicas = [Replica(i, engine, cost, policy, block_tokens=BT, capacity_blocks=4096)
                for i in range(2)]
    for replica in replicas:
        replica.slots = slots
    policy.bind(PolicyContext(replicas=replicas, cost=cost, block_tokens=BT))
    for workflow, home in (("a", 0), ("b", 1)):
        first = _call(workflow, 0, (("s:sys", 0, 16), (f"w:{workflow}", 0, 150)), 0.0)
        policy.on_call_ready(first, 0.0)
        policy.on_call_finished(first, home, 10.0)
    assert policy.homed_flows == [1, 1]
    for k in range(6):
        r = Request("other", f"o{k}", (("w:o", k * 2000, 1500),), 100_000, 100, BT, k)
        replicas[0].enqueue(r, 15.0)
    nxt = _call("a", 1, (("s:sys", 0, 16), ("w:a", 0, 200)), 15.0)
    policy.on_call_ready(nxt, 15.0)
    return policy, policy.place(nxt, 15.0)


def test_a_workflow_stays_home_when_the_other_replica_has_no_slot_free() -> None:
    policy, chosen = _overloaded_home(CFG, slots=1)  # b holds replica 1's only slot
    assert chosen == 0 and policy.steals == 0


def test_a_workflow_moves_to_a_free_slot() -> None:
    policy, chosen = _overloaded_home(CFG, slots=2)
    assert chosen == 1 and policy.steals == 1
    assert policy.homed_flows == [0, 2]


def test_without_slots_or_with_steal_slots_off_the_steal_is_as_before() -> None:
    for config, slots in ((CFG, None), (CFG.model_copy(update={"steal_slots": False}), 1)):
        policy, chosen = _overloaded_home(config, slots)
        assert chosen == 1 and policy.steals == 1
    assert SagaConfig().steal_slots  # on by default (docs/engines.md)
