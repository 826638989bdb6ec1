"""Exact-state tests of the run-granular prefix cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga.engine.kvcache import KeyedEviction, KVNode, RadixKV, Run


def cache_path(kv: RadixKV, runs: list[Run], now: float = 0.0) -> KVNode:
    """Cache ``runs`` as a call would: lock the hit, allocate the rest, insert."""
    node, hit = kv.lock(runs, now)
    total = sum(r[2] for r in runs)
    assert kv.allocate(total - hit, now)
    rest = _skip(runs, hit)
    new, added = kv.insert(node, rest, now)
    kv.unlock(node, now)
    kv.adopt(added, now)
    kv.release_anonymous(total - hit - added, now)
    return new


def _skip(runs: list[Run], blocks: int) -> list[Run]:
    out = []
    for ns, first, count in runs:
        if blocks >= count:
            blocks -= count
            continue
        out.append((ns, first + blocks, count - blocks))
        blocks = 0
    return out


def test_empty_cache_misses() -> None:
    kv = RadixKV(100)
    assert kv.match_blocks([("w:a", 0, 10)]) == 0
    assert kv.free_blocks == 100


def test_hit_after_release_and_partial_match() -> None:
    kv = RadixKV(100)
    node = cache_path(kv, [("s:sys", 0, 4), ("w:a", 0, 10)])
    kv.unlock(node)
    assert kv.cached_blocks == 14 and kv.locked_blocks == 0
    assert kv.match_blocks([("s:sys", 0, 4), ("w:a", 0, 10), ("w:a", 10, 5)]) == 14
    assert kv.match_blocks([("s:sys", 0, 4), ("w:a", 0, 6)]) == 10
    # a different workflow shares only the system prompt
    assert kv.match_blocks([("s:sys", 0, 4), ("w:b", 0, 10)]) == 4
    # a run that diverges (new id at block 7) shares 7 blocks
    assert kv.match_blocks([("s:sys", 0, 4), ("w:a", 0, 3), ("w:a", 20, 5)]) == 7
    kv.check()


def test_lock_inside_a_node_splits_it_and_counts_exactly() -> None:
    kv = RadixKV(100)
    node = cache_path(kv, [("w:a", 0, 10)])
    kv.unlock(node)
    upper, hit = kv.lock([("w:a", 0, 4), ("w:a", 50, 2)])
    assert hit == 4
    assert (upper.first, upper.count, upper.ref) == (0, 4, 1)
    assert kv.locked_blocks == 4 and kv.evictable_blocks == 6
    kv.check()
    # only the unlocked tail can be evicted
    assert kv.evict(100) == 6
    assert kv.cached_blocks == 4
    kv.unlock(upper)
    kv.check()


def test_lru_evicts_least_recently_released_tail_first() -> None:
    kv = RadixKV(30)
    a = cache_path(kv, [("w:a", 0, 10)], now=1.0)
    b = cache_path(kv, [("w:b", 0, 10)], now=2.0)
    kv.unlock(a, 3.0)
    kv.unlock(b, 4.0)
    # 10 free; ask for 15: 5 must go, from the tail of a (released first)
    assert kv.allocate(15, 5.0)
    assert kv.match_blocks([("w:a", 0, 10)]) == 5
    assert kv.match_blocks([("w:b", 0, 10)]) == 10
    kv.release_anonymous(15)
    kv.check()


def test_touch_on_hit_refreshes_lru_order() -> None:
    kv = RadixKV(20)
    a = cache_path(kv, [("w:a", 0, 10)])
    b = cache_path(kv, [("w:b", 0, 10)])
    kv.unlock(a)
    kv.unlock(b)
    again, _ = kv.lock([("w:a", 0, 10)])  # a is hit again, then released after b
    kv.unlock(again)
    assert kv.allocate(10)
    assert kv.match_blocks([("w:b", 0, 10)]) == 0
    assert kv.match_blocks([("w:a", 0, 10)]) == 10


def test_children_are_evicted_before_their_shared_parent() -> None:
    kv = RadixKV(24)
    a = cache_path(kv, [("s:sys", 0, 4), ("w:a", 0, 10)])
    b = cache_path(kv, [("s:sys", 0, 4), ("w:b", 0, 10)])
    kv.unlock(a)
    kv.unlock(b)
    assert kv.cached_blocks == 24
    # need 20: both private chains go before the shared prefix is touched
    assert kv.allocate(20)
    assert kv.match_blocks([("s:sys", 0, 4)]) == 4
    assert kv.match_blocks([("s:sys", 0, 4), ("w:a", 0, 10)]) == 4
    kv.check()


def test_locked_blocks_are_never_evicted_and_allocation_fails_cleanly() -> None:
    kv = RadixKV(12)
    a = cache_path(kv, [("w:a", 0, 10)])
    assert not kv.allocate(3)
    assert kv.anonymous_blocks == 0 and kv.cached_blocks == 10
    assert kv.allocate(2)
    kv.unlock(a)
    kv.check()


def test_extending_a_private_leaf_keeps_one_node_per_run() -> None:
    kv = RadixKV(200)
    node = cache_path(kv, [("w:a", 0, 10)])
    for step in range(5):
        total = 10 + 10 * (step + 1)
        assert kv.allocate(10)
        new, added = kv.insert(node, [("w:a", total - 10, 10)])
        kv.unlock(node)
        kv.adopt(added)
        node = new
    assert len(list(kv.nodes())) == 1
    assert node.count == 60
    kv.unlock(node)
    kv.check()


def test_keyed_eviction_follows_the_policy_key() -> None:
    next_use = {"w:a": 100.0, "w:b": 5.0}
    order = KeyedEviction("next-use", lambda n, now: -next_use[n.namespace])
    kv = RadixKV(20, order)
    a = cache_path(kv, [("w:a", 0, 10)])
    b = cache_path(kv, [("w:b", 0, 10)])
    kv.unlock(b)  # b released first: LRU would evict it, next-use evicts a
    kv.unlock(a)
    assert kv.allocate(10)
    assert kv.match_blocks([("w:a", 0, 10)]) == 0
    assert kv.match_blocks([("w:b", 0, 10)]) == 10


def test_drop_frees_private_chain_but_not_shared_prefix() -> None:
    kv = RadixKV(40)
    a = cache_path(kv, [("s:sys", 0, 4), ("w:a", 0, 10), ("w:a", 20, 3)])
    kv.unlock(a)
    assert kv.drop(a) == 13
    assert kv.cached_blocks == 4
    kv.check()


def test_usage_integrals_count_busy_and_reused_idle_time() -> None:
    kv = RadixKV(100)
    node = cache_path(kv, [("w:a", 0, 10)], now=0.0)
    kv.unlock(node, 2.0)  # busy 10 blocks for 2 s
    again, _ = kv.lock([("w:a", 0, 10)], 5.0)  # idle 3 s, then hit: reused
    kv.unlock(again, 6.0)
    kv.tick(10.0)
    assert kv.busy_block_seconds == 10 * 2 + 10 * 1
    assert kv.reused_idle_block_seconds == 10 * 3


runs_strategy = st.lists(
    st.tuples(st.sampled_from(["w:a", "w:b", "s:x"]), st.integers(0, 6), st.integers(1, 5)),
    min_size=1,
    max_size=3,
)


def _by_namespace(node: KVNode, now: float) -> float:
    return {"w:a": 2.0, "w:b": 1.0}.get(node.namespace, 3.0)


@pytest.mark.parametrize("keyed", [False, True])
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), runs_strategy), min_size=1, max_size=25))
def test_random_workloads_keep_invariants_and_leak_nothing(
    keyed: bool, ops: list[tuple[bool, list[Run]]],
) -> None:
    # keyed: check() also asserts the kept set of evictable leaves equals a tree walk's
    kv = RadixKV(40, KeyedEviction("ns", _by_namespace) if keyed else None)
    held: list[KVNode] = []
    for release_one, runs in ops:
        if release_one and held:
            kv.unlock(held.pop(0))
        else:
            node, hit = kv.lock(runs)
            need = sum(r[2] for r in runs) - hit
            if not kv.allocate(need):
                kv.unlock(node)
                continue
            new, added = kv.insert(node, _skip(runs, hit))
            kv.unlock(node)
            kv.adopt(added)
            kv.release_anonymous(need - added)
            held.append(new)
        kv.check()
    for node in held:
        kv.unlock(node)
    kv.check()
    assert kv.locked_blocks == 0 and kv.anonymous_blocks == 0
    cached = kv.cached_blocks
    assert kv.evict(10**6) == cached
    assert kv.cached_blocks == 0
    kv.check()


def test_a_leaf_another_call_holds_is_not_extended_under_its_lock() -> None:
    """Two calls of one workflow: b inserts a longer prompt that runs through a's leaf
    (cached by a meanwhile). a's node must stay a's 4 blocks; b's 2 more blocks go to a
    child of it, so a's lock never covers blocks that a does not hold."""
    kv = RadixKV(100)
    root_lock, _ = kv.lock([("w:x", 0, 6)])  # b looked up before a's blocks were cached
    a = cache_path(kv, [("w:x", 0, 4)])  # a holds its leaf: ref 1
    assert kv.allocate(6)
    b, added = kv.insert(root_lock, [("w:x", 0, 6)])
    kv.unlock(root_lock)
    kv.adopt(added)
    kv.release_anonymous(6 - added)
    assert added == 2 and a.count == 4
    assert b.parent is a and (b.first, b.count) == (4, 2)
    assert a.ref == 2 and b.ref == 1  # a's own lock, and b's through its child
    kv.check()
    kv.unlock(a)
    kv.unlock(b)
    assert kv.locked_blocks == 0
    kv.check()


# ---- keyed eviction with a floor: the victim is the full ranking's -----------------------
def _floored_key(values: dict[str, float]) -> KeyedEviction:
    """Keys by namespace, and by how many blocks the leaf holds and the time (so that a
    partial eviction and the clock move them), never below -1: many ties at the floor."""
    def key(node: KVNode, now: float) -> float:
        value = values.get(node.namespace, 0.0)
        return value if value <= 0.0 else value + (node.count % 3) + (now % 2.0)
    return KeyedEviction("floored", key, floor=-1.0)


def _full_ranking(kv: RadixKV, now: float) -> KVNode:
    """The victim as the keyed eviction chose it before it had a floor: every leaf ranked."""
    key = kv.eviction.key_function()
    return min([(key(n, now), n.stamp, id(n), n) for n in kv._leaves])[3]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["w:a", "w:b", "s:x"]),
                    st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=3),
    st.lists(st.tuples(st.booleans(), runs_strategy, st.integers(1, 12),
                       st.sampled_from([0.0, 0.5, 1.5, 3.0])), min_size=1, max_size=30),
)
def test_a_floored_order_evicts_the_leaf_the_full_ranking_would(
    values: dict[str, float], ops: list[tuple[bool, list[Run], int, float]],
) -> None:
    kv = RadixKV(40, _floored_key(values))
    evicted: list[KVNode] = []
    kv.on_evict = lambda node, blocks: evicted.append(node)
    held: list[KVNode] = []
    for release_one, runs, blocks, now in ops:
        if kv._leaves:
            expected = _full_ranking(kv, now)
            assert kv._first_ranked(kv.eviction.key_function(), now) is expected
            if blocks <= expected.count:
                evicted.clear()
                assert kv.evict(blocks, now) == blocks
                assert evicted == [expected]
        if release_one and held:
            kv.unlock(held.pop(0), now)
        else:
            # match_blocks walks as match does (its own loop, for placement's speed)
            assert kv.match_blocks(runs) == kv.match(runs).blocks
            node, hit = kv.lock(runs, now)
            need = sum(r[2] for r in runs) - hit
            if not kv.allocate(need, now):
                kv.unlock(node, now)
                continue
            new, added = kv.insert(node, _skip(runs, hit), now)
            kv.unlock(node, now)
            kv.adopt(added, now)
            kv.release_anonymous(need - added, now)
            held.append(new)
        kv.check()


def test_a_split_shares_its_stamp_but_never_between_two_evictable_leaves() -> None:
    """The floor probe takes the earliest released leaf as the only one of its stamp: a
    split's upper part copies the stamp, but stays above the lower part until it goes."""
    kv = RadixKV(40, KeyedEviction("floor", lambda n, now: -1.0, floor=-1.0))
    kv.unlock(cache_path(kv, [("w:a", 0, 6)]))
    (lower,) = kv._leaves
    upper, _ = kv.lock([("w:a", 0, 2)])  # splits w:a after 2 blocks; stamps stay
    kv.unlock(upper)
    assert upper.stamp != lower.stamp  # the release re-stamps the part it held
    kv.check()
    node, _ = kv.lock([("w:a", 0, 6)])
    kv.unlock(node)
    again, _ = kv.lock([("w:a", 0, 4)])  # a split of the released lower part: one stamp
    assert again.stamp == node.stamp and node.parent is again and kv._leaves == {node}
    kv.unlock(again)
    kv.check()
    assert kv.evict(2) == 2 and node.parent is None  # the lower part went first
    assert kv._leaves == {again} and kv._first_ranked(lambda n, now: -1.0, 0.0) is again
    kv.check()


def test_a_floored_eviction_asks_the_leaves_in_release_order_until_one_at_the_floor() -> None:
    """The leaves are kept by release stamp: the eviction asks them earliest first, and
    stops at the first keyed at the floor, whatever order they became leaves in."""
    asked: list[str] = []
    floor_at = {"w:b"}

    def key(node: KVNode, now: float) -> float:
        asked.append(node.namespace)
        return -1.0 if node.namespace in floor_at else 1.0

    kv = RadixKV(40, KeyedEviction("floored", key, floor=-1.0))
    nodes = {ns: cache_path(kv, [(ns, 0, 2)]) for ns in ("w:a", "w:b", "w:c", "w:d")}
    for ns in ("w:c", "w:a", "w:d", "w:b"):  # released in this order: stamps ascend
        kv.unlock(nodes[ns])
    kv.check()
    assert kv._first_ranked(key, 0.0) is nodes["w:b"]
    assert asked == ["w:c", "w:a", "w:d", "w:b"]
    # a leaf that joins later with an older stamp (its last child evicted) is asked in
    # its stamp's place
    asked.clear()
    parent = cache_path(kv, [("w:e", 0, 2)])
    child = cache_path(kv, [("w:e", 0, 2), ("w:f", 0, 2)])
    kv.unlock(parent)
    kv.unlock(child)  # both stamped; the parent is no leaf: it has a child
    kv.unlock(cache_path(kv, [("w:g", 0, 2)]))  # a leaf released after them
    kv.drop(child)  # the parent becomes a leaf, with its older stamp
    kv.check()
    floor_at.clear()
    kv._first_ranked(key, 0.0)
    assert asked == ["w:c", "w:a", "w:d", "w:b", "w:e", "w:g"]


def test_two_evictable_leaves_with_one_stamp_are_refused() -> None:
    """The floor probe relies on distinct stamps among the leaves: a leaf whose stamp is
    already indexed raises instead of hiding the other."""
    kv = RadixKV(40, KeyedEviction("floor", lambda n, now: -1.0, floor=-1.0))
    kv.unlock(cache_path(kv, [("w:a", 0, 2)]))
    (leaf,) = kv._leaves
    twin = KVNode("w:b", 0, 1, kv.root)
    twin.stamp = leaf.stamp
    with pytest.raises(AssertionError, match="shares stamp"):
        kv._push_leaf(twin)


def test_a_key_below_the_floor_is_an_error_not_a_silent_victim() -> None:
    kv = RadixKV(40, KeyedEviction("broken", lambda n, now: -2.0, floor=-1.0))
    kv.unlock(cache_path(kv, [("w:a", 0, 2)]))
    with pytest.raises(AssertionError, match="below its floor"):
        kv.evict(1)


def test_the_earliest_leaf_above_the_floor_does_not_end_the_ranking() -> None:
    keys = {"w:old": 0.0, "w:ended": -1.0}
    kv = RadixKV(40, KeyedEviction("floor", lambda n, now: keys[n.namespace], floor=-1.0))
    kv.unlock(cache_path(kv, [("w:old", 0, 2)]))  # released first, but keyed above -1
    kv.unlock(cache_path(kv, [("w:ended", 0, 2)]))
    assert kv.evict(2) == 2
    assert kv.match_blocks([("w:ended", 0, 2)]) == 0
    assert kv.match_blocks([("w:old", 0, 2)]) == 2
