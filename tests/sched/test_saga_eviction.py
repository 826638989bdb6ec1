"""SAGA's eviction key: next use, and (optionally) the chance of a return and the cost of
rebuilding a block."""

from __future__ import annotations

import random
from collections.abc import Callable

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


def _generic_first(leaves: list[KVNode], key: Callable[[KVNode, float], float],
                   now: float) -> KVNode:
    """RadixKV._first_ranked's floored scan with the key asked leaf by leaf."""
    best, best_key = leaves[0], key(leaves[0], now)
    for node in leaves[1:]:
        if best_key == -1.0:
            break
        k = key(node, now)
        if k < best_key:
            best, best_key = node, k
    return best


def test_the_inline_scan_takes_the_leaf_the_keys_rank_first() -> None:
    """``_first_evicted`` (the engine's scan, SagaPolicy's keys inline) against the scan
    asking :meth:`SagaPolicy._eviction_key` leaf by leaf: on random leaves (private, shared
    and other namespaces, at random depths) and random flow states, at random instants,
    under every weighting, the same leaf; and every branch is taken (a leaf at the floor
    first, later, or none; equal keys, where release order decides)."""
    rng = random.Random(7)
    outcomes = set()
    for trial in range(400):
        by_cost, by_chance = rng.random() < 0.7, rng.random() < 0.5
        policy = _policy(by_cost=by_cost, by_chance=by_chance)
        root = KVNode("", 0, 0, None)
        shared = KVNode("s:sys", 0, rng.randint(1, 50), root)
        leaves: list[KVNode] = []
        for i in range(rng.randint(1, 9)):
            kind = rng.random()
            if kind < 0.1:
                leaves.append(KVNode(f"s:p{i}", 0, rng.randint(1, 9), root))
                policy.prefix_users[f"s:p{i}"] = rng.randint(0, 3)
            elif kind < 0.15:
                leaves.append(KVNode(f"x{i}", 0, 2, root))
            else:
                name = f"f{i}"
                parent = shared if rng.random() < 0.5 else KVNode(f"w:{name}", 0, 40, shared)
                leaves.append(KVNode(f"w:{name}", 40, rng.choice([1, 1, 7, 300]), parent))
                state = rng.random()
                if state < 0.85:  # in flight (else gone: no flow)
                    # a few share a next use, so that equal keys occur
                    _in_tool(policy, name, next_use=rng.choice([5.0, 5.0, rng.uniform(0, 90)]),
                             p_return=rng.choice([0.0, 0.5, 0.9]))
                    flow = policy.flows[name]
                    flow.in_tool = rng.random() < 0.8
                    flow.predicted_end = rng.random() < 0.15
        now = rng.uniform(0.0, 100.0)
        expected = _generic_first(leaves, policy._eviction_key, now)
        order = policy.eviction_order(0)
        assert order.first_ranked is not None
        assert order.first_ranked(leaves, now) is expected, trial
        keys = [policy._eviction_key(n, now) for n in leaves]
        at = keys.index(-1.0) if -1.0 in keys else None
        outcomes.add("floor first" if at == 0 else "floor later" if at else "no floor")
        if at is None and keys.count(min(keys)) > 1:
            outcomes.add("tie")
    assert outcomes == {"floor first", "floor later", "no floor", "tie"}


def test_a_subclass_key_is_asked_leaf_by_leaf() -> None:
    class Oldest(SagaPolicy):
        def _eviction_key(self, node: KVNode, now: float) -> float:
            return float(node.stamp)

    policy = Oldest()
    policy.bind(PolicyContext([], cost_model_for("llama-3.1-8b", "h100-sxm", 1), BT))
    assert policy.eviction_order(0).first_ranked is None
    plain = _policy(by_cost=False)
    plain._eviction_key = lambda node, now: 2.5  # type: ignore[method-assign]
    assert plain.eviction_order(0).first_ranked is None
    assert _policy(by_cost=False).eviction_order(0).first_ranked is not None
