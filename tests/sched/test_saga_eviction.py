"""SAGA's eviction key: next use, and (optionally) the chance of a return and the cost of
rebuilding a block."""

from __future__ import annotations

from saga.engine.costmodel import cost_model_for
from saga.engine.kvcache import KVNode
from saga.sched.policy import PolicyContext, WorkflowInfo
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import Flow, SagaPolicy

BT = 64


def _policy(by_cost: bool, by_chance: bool = False) -> SagaPolicy:
    policy = SagaPolicy(SagaConfig(eviction_by_rebuild_cost=by_cost,
                                   eviction_by_return_chance=by_chance))
    policy.bind(PolicyContext([], cost_model_for("llama-3.1-8b", "h100-sxm", 1), BT))
    return policy


def _in_tool(policy: SagaPolicy, name: str, next_use: float, p_return: float = 0.9) -> None:
    flow = Flow(WorkflowInfo(name, "t", "a", 0.0, None), in_tool=True)
    flow.next_use, flow.p_return = next_use, p_return
    policy.flows[name] = flow


def _leaves() -> tuple[KVNode, KVNode]:
    """A short context (10 blocks after a 20-block shared prefix) and a long one (1,500)."""
    root = KVNode("", 0, 0, None)
    shared = KVNode("s:sys", 0, 20, root)
    return KVNode("w:short", 0, 10, shared), KVNode("w:long", 0, 1500, shared)


def test_next_use_alone_evicts_the_later_reuse_first() -> None:
    policy = _policy(by_cost=False)
    _in_tool(policy, "short", next_use=10.0)
    _in_tool(policy, "long", next_use=20.0)
    short, long = _leaves()
    assert policy._eviction_key(long, 0.0) < policy._eviction_key(short, 0.0)
    assert policy._eviction_key(short, 0.0) == 1.0 / (10.0 + 1.0)


def test_the_chance_of_return_is_not_weighed_unless_asked() -> None:
    # short comes back sooner but less surely: by time alone it is kept, weighted by its
    # chance of return it goes first
    for by_chance, first in ((False, "w:long"), (True, "w:short")):
        policy = _policy(by_cost=False, by_chance=by_chance)
        _in_tool(policy, "short", next_use=10.0, p_return=0.3)
        _in_tool(policy, "long", next_use=20.0, p_return=0.9)
        short, long = _leaves()
        keys = {n.namespace: policy._eviction_key(n, 0.0) for n in (short, long)}
        assert min(keys, key=keys.__getitem__) == first
        assert keys["w:short"] == (0.3 if by_chance else 1.0) / 11.0


def test_a_queued_workflow_is_kept_before_any_in_a_tool() -> None:
    policy = _policy(by_cost=False)
    _in_tool(policy, "short", next_use=0.0)  # due now
    _in_tool(policy, "long", next_use=20.0)
    policy.flows["long"].in_tool = False  # its call is queued
    short, long = _leaves()
    assert policy._eviction_key(long, 0.0) == 2.0 > policy._eviction_key(short, 0.0) == 1.0


def test_rebuild_cost_keeps_the_deep_block_that_is_dearer_to_recompute() -> None:
    policy = _policy(by_cost=True)
    _in_tool(policy, "short", next_use=10.0)
    _in_tool(policy, "long", next_use=20.0)
    short, long = _leaves()
    cost = policy.ctx.cost
    chunk = 2048
    weight = (cost.prefill_time(1520 * BT + chunk, 1520 * BT) / cost.prefill_time(chunk, 0))
    assert weight > 2.0  # ~97k tokens deep: attention dominates
    assert policy._eviction_key(long, 0.0) == 1.0 / 21.0 * weight
    assert policy._eviction_key(short, 0.0) < policy._eviction_key(long, 0.0)


def test_finished_workflows_go_first_whatever_their_depth() -> None:
    policy = _policy(by_cost=True)
    short, long = _leaves()  # neither workflow is in flight any more
    assert policy._eviction_key(long, 0.0) == policy._eviction_key(short, 0.0) == -1.0


def test_no_key_is_below_the_floor_the_order_declares() -> None:
    """The engine's tree stops ranking at the earliest leaf keyed at the order's floor
    (kvcache.RadixKV._first_ranked): every kind of leaf must key at or above it."""
    for by_cost in (False, True):
        for by_chance in (False, True):
            policy = _policy(by_cost=by_cost, by_chance=by_chance)
            floor = policy.eviction_order(0).floor
            assert floor == -1.0
            root = KVNode("", 0, 0, None)
            shared = KVNode("s:sys", 0, 20, root)
            leaves = [KVNode(f"w:{n}", 0, 10, shared)
                      for n in ("due", "later", "zero", "queued", "ended", "gone")]
            leaves += [shared, KVNode("other", 0, 3, root)]
            _in_tool(policy, "due", next_use=0.0)
            _in_tool(policy, "later", next_use=30.0)
            _in_tool(policy, "zero", next_use=5.0, p_return=0.0)
            _in_tool(policy, "queued", next_use=5.0)
            policy.flows["queued"].in_tool = False
            _in_tool(policy, "ended", next_use=5.0)
            policy.flows["ended"].predicted_end = True
            keys = [policy._eviction_key(n, now) for n in leaves for now in (0.0, 10.0, 99.0)]
            assert min(keys) == floor  # the ended and the gone workflows: at it, not below
