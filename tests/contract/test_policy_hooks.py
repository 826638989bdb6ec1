"""Every registered policy behind every adapter, asked every hook: the interface's contract.

Each policy bound to each adapter (:mod:`adapters`) is asked every hook of
:class:`saga.sched.policy.Policy` with that runtime's own replicas and call records, on a
small workload (four workflows of three calls, two tenants, one with an SLO, a shared
prefix), and every answer must be of the promised type and range. The same workload
through each runtime's real pipeline is :mod:`test_runtime_pipelines`.
"""

from __future__ import annotations

import collections
import itertools
import math
import random
import types
from collections import Counter

import pytest
from adapters import WORLDS, World

from saga.engine.kvcache import EvictionOrder, KVNode
from saga.errors import UserError
from saga.sched.decisions import Admission, Retention
from saga.sched.policy import PolicyContext
from saga.sched.registry import build_policy, list_policies
from saga.sched.view import CallInfo, CallView, WorkflowInfo

POLICIES = list_policies()
SHARED = ("s:system", 0, 4)


def _workflows() -> list[WorkflowInfo]:
    return [
        WorkflowInfo(f"w{i}", f"t{i % 2}", "coder" if i < 3 else "browser", 0.1 * i,
                     3.0 if i == 0 else None)
        for i in range(4)
    ]


def _call(wf: WorkflowInfo, k: int, now: float) -> CallInfo:
    own = (f"w:{wf.workflow}", 0, 4 + 3 * k)
    return CallInfo(
        workflow=wf.workflow, tenant=wf.tenant, agent=wf.agent, call_id=f"c{k}", index=k,
        tool="bash" if k else None, prompt_tokens=64 * (8 + 3 * k), runs=(SHARED, own),
        issued_at=now, workflow_arrival=wf.arrival, slo=wf.slo, ends_workflow=k == 2,
        output_tokens=16, next_gap=None if k == 2 else 1.0,
        next_runs=None if k == 2 else (SHARED, (f"w:{wf.workflow}", 0, 7 + 3 * k)),
    )


def _check_key(key: tuple[float, ...]) -> None:
    assert isinstance(key, tuple) and key
    assert all(isinstance(x, int | float) and not math.isnan(x) for x in key)


def _check_eviction(order: EvictionOrder, now: float) -> None:
    assert isinstance(order, EvictionOrder)
    root = KVNode("", 0, 0, None)
    for namespace in ("w:w0", "w:gone", "s:system"):
        key = order.key(KVNode(namespace, 0, 4, root), now)
        assert isinstance(key, int | float) and not math.isnan(key)


# the runtime's context (its replicas, cost model, clock) is the adapter's state, not the
# policy's: the snapshot stops there
_OPAQUE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
           type, PolicyContext)


def _state(obj: object, memo: dict[int, tuple[int, object]] | None = None) -> object:
    """Everything reachable from ``obj`` as nested tuples of plain values, so two snapshots
    are equal exactly when no attribute, container or counter changed in between
    (functions, classes and modules stand for themselves; a shared object is a reference
    to its first visit; the memo keeps each visited object alive, so no id is reused)."""
    memo = {} if memo is None else memo
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, _OPAQUE):
        return ("opaque", getattr(obj, "__qualname__", type(obj).__qualname__))
    if id(obj) in memo:
        return ("ref", memo[id(obj)][0])
    memo[id(obj)] = (len(memo), obj)
    if isinstance(obj, random.Random):
        return ("random", obj.getstate())
    if isinstance(obj, dict):
        return ("dict", tuple((_state(k, memo), _state(v, memo)) for k, v in obj.items()))
    if isinstance(obj, list | tuple | set | frozenset | collections.deque):
        return (type(obj).__name__, tuple(_state(x, memo) for x in obj))
    fields = list(getattr(obj, "__dict__", {}).items())
    fields += [(slot, getattr(obj, slot)) for cls in type(obj).__mro__
               for slot in getattr(cls, "__slots__", ()) if hasattr(obj, slot)]
    return (type(obj).__qualname__, tuple((name, _state(value, memo)) for name, value in fields))


def drive_every_hook(world: World) -> None:
    policy, replicas = world.policy, world.replicas
    n = len(replicas)
    asked: Counter[str] = Counter()
    now = 0.0
    policy.set_tenant_weights({"t0": 2.0, "t1": 1.0})
    workflows = _workflows()
    admitted = []
    for wf in workflows:
        decision = policy.admit(wf, now)
        assert isinstance(decision, Admission)
        assert decision.verdict in ("admit", "defer", "reject")
        if decision.verdict == "admit":
            admitted.append(wf)
    assert admitted, "nobody admitted on an idle cluster"
    gone = WorkflowInfo("gone", "t1", "coder", 0.0, None)
    policy.admit(gone, now)
    policy.on_admission_withdrawn(gone, now)
    for i in range(n):
        _check_eviction(policy.eviction_order(i), now)

    for k in range(3):
        calls: list[tuple[WorkflowInfo, CallInfo, int, CallView]] = []
        for wf in admitted:
            info = _call(wf, k, now)
            policy.on_call_ready(info, now)
            index = policy.place(info, now)
            assert isinstance(index, int) and 0 <= index < n and replicas[index].up
            calls.append((wf, info, index, world.submit(info, index, now)))
        # every call the runtime holds, in front of the hooks that read calls; the queue
        # keys (one by one and as the engine's sort function) and preempt_for must change
        # no state of the policy (the simulator's fold barrier asks them without syncing
        # the fleet: sim/fold_barrier.py)
        before = _state(policy)
        for replica in replicas:
            held = [*replica.waiting, *replica.running]
            keys = policy.queue_keys(replica, now)  # what the engine sorts a queue by
            for call in held:
                _check_key(policy.queue_key(replica, call, now))
                assert keys(call) == policy.queue_key(replica, call, now)
                asked["queue_key"] += 1
            for first, second in itertools.pairwise(held):
                assert isinstance(policy.preempt_for(replica, first, second, now), bool)
                asked["preempt_for"] += 1
        assert _state(policy) == before, "queue_key or preempt_for changed the policy"
        for replica in replicas:
            unpin = policy.unpin_order(replica, now)
            assert set(unpin) <= set(replica.pins)
        now += 1.0
        for wf, info, index, call in calls:
            decision = policy.retention(replicas[index], call, now)
            assert isinstance(decision, Retention)
            assert decision.kind in ("release", "pin", "offload", "drop")
            assert decision.ttl >= 0.0
            asked["retention"] += 1
            world.finish(call, index, decision, now)
            policy.on_call_finished(info, index, now)
            if info.ends_workflow:
                policy.on_workflow_finished(wf, now)
        for replica in replicas:
            assert set(policy.unpin_order(replica, now)) <= set(replica.pins)
        for i in range(n):
            _check_eviction(policy.eviction_order(i), now)
        now += 1.0
    policy.learned_graphs()
    # the runtime's own call records reached the hooks that read calls
    assert asked["queue_key"] >= len(admitted) and asked["preempt_for"] > 0
    assert asked["retention"] == 3 * len(admitted)


@pytest.mark.parametrize("adapter", sorted(WORLDS))
@pytest.mark.parametrize("name", POLICIES)
def test_every_hook_of_every_policy_behind_every_adapter(name: str, adapter: str) -> None:
    if adapter == "gateway" and build_policy(name).offline:
        with pytest.raises(UserError, match="reads the future"):
            WORLDS[adapter](name)
        return
    drive_every_hook(WORLDS[adapter](name))
