"""Paged KV cache of one replica: a prefix cache over runs of blocks.

vLLM keeps one hash per 16- or 64-token block, each hash chained on the one
before it, so that a block is reused only when everything before it matches too.
A prompt of 100k tokens is 1,600 such blocks, and a simulator that walked them one
by one for every call could not run an hour of a 64-GPU cluster in a minute.

This cache keeps exactly the same semantics at the granularity of *runs*:
a prompt is a sequence of runs ``(namespace, first_id, count)`` (see
:mod:`saga.core.workflow`), and the cache is a radix tree whose nodes each hold
one run of consecutive blocks. Walking a prompt costs one step per run, not per
block. Two prompts share a block exactly when they share the whole chain of runs
up to it, which is what chained hashes give.

Memory is counted in blocks, as in vLLM:

* *locked* blocks belong to nodes with a reference count above zero (a running
  call uses them, or a retention policy pins them);
* *cached* blocks sit in nodes with no reference: reusable on a hit, evictable;
* *anonymous* blocks are held by running calls outside the tree (a partial last
  block, prompt blocks still being computed, output being generated);
* everything else is free.

Eviction frees cached blocks from the tails of leaves. Its order is the
:class:`EvictionOrder`'s. The default, :class:`LRUEviction`, reproduces vLLM v1's
free-block queue: when a call releases its blocks they join the queue tail-first
(deepest block first), and eviction takes from the head, so the least recently
released leaf loses its last block first. A node's blocks always have one release
stamp, because a hit that ends inside a node splits it first.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter

Run = tuple[str, int, int]
"""A run of consecutive blocks: ``(namespace, first_id, count)``."""


class KVNode:
    """One run of cached blocks in the radix tree."""

    __slots__ = (
        "children",
        "count",
        "depth",
        "first",
        "idle_since",
        "namespace",
        "parent",
        "ref",
        "stamp",
        "users",
    )

    def __init__(self, namespace: str, first: int, count: int, parent: KVNode | None) -> None:
        self.namespace = namespace
        self.first = first
        self.count = count
        self.parent = parent
        self.children: dict[tuple[str, int], KVNode] = {}
        self.ref = 0
        # Release stamp: a larger stamp was released later. Set when ref drops to 0.
        self.stamp = 0
        self.depth: int = 0 if parent is None else parent.depth + 1
        # Running calls using the node (refs minus retention pins) and since when
        # none has: the memory-utilization metric counts idle time that ended in a hit.
        self.users = 0
        self.idle_since = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.namespace, self.first)

    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return f"KVNode({self.namespace}:{self.first}+{self.count}, ref={self.ref})"


class EvictionOrder(ABC):
    """Chooses which cached leaf loses blocks first. Smaller key is evicted first.

    ``key`` must never depend on the wall clock; ``now`` is passed in.
    """

    name = "base"
    #: True when the key only changes at release (then a heap of stamps is exact).
    static = False
    #: The least key the order ever gives, if it has one. The earliest released leaf, if
    #: keyed at the floor, ranks first whatever the others' keys, so a keyed eviction asks
    #: its key alone (most of saga's evictions take the KV of an ended workflow, keyed at
    #: the floor, and the oldest leaf is usually one).
    floor: float | None = None

    @abstractmethod
    def key(self, node: KVNode, now: float) -> float:
        """The node's eviction priority at ``now``."""

    def key_function(self) -> Callable[[KVNode, float], float]:
        """:meth:`key` as the plainest callable (an eviction asks it of every leaf)."""
        return self.key


class LRUEviction(EvictionOrder):
    """vLLM v1's free-block queue: least recently released first, deepest first."""

    name = "lru"
    static = True

    def key(self, node: KVNode, now: float) -> float:
        return float(node.stamp)


class KeyedEviction(EvictionOrder):
    """Eviction by a policy's key function (next use, steps to execution, ...).

    Ties fall back to LRU order, so the order is always total and deterministic.
    """

    static = False

    def __init__(
        self, name: str, key_fn: Callable[[KVNode, float], float], floor: float | None = None
    ) -> None:
        self.name = name
        self._key_fn = key_fn
        self.floor = floor

    def key(self, node: KVNode, now: float) -> float:
        return self._key_fn(node, now)

    def key_function(self) -> Callable[[KVNode, float], float]:
        return self._key_fn


@dataclass(frozen=True, slots=True)
class Match:
    """Result of looking a prompt up: ``blocks`` matched, ending in ``node``
    after ``offset`` of its blocks (``offset == node.count`` when the match ends at
    the node's end; the root with offset 0 when nothing matched)."""

    blocks: int
    node: KVNode
    offset: int


class RadixKV:
    """Prefix cache of one memory tier (GPU or host) with a block capacity."""

    def __init__(self, capacity_blocks: int, eviction: EvictionOrder | None = None) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self.eviction: EvictionOrder = eviction or LRUEviction()
        self.root = KVNode("", 0, 0, None)
        self.root.ref = 1  # the root is never evicted
        self.cached_blocks = 0  # every block in the tree
        self.locked_blocks = 0  # blocks in nodes with ref > 0
        self.anonymous_blocks = 0
        self.evicted_blocks = 0  # running total, for metrics
        # Memory utilization (saga.metrics.summary): block-seconds of blocks in use by
        # running calls, plus block-seconds of idle blocks that were hit again.
        self.inuse_blocks = 0  # blocks in nodes with users > 0
        self.busy_block_seconds = 0.0
        self.reused_idle_block_seconds = 0.0
        # Of the busy blocks, those a running call holds while it recomputes KV that it
        # (after a preemption) or its workflow (a prefix evicted between calls) had
        # computed before: counted busy, but serving nothing new.
        self.recompute_blocks = 0
        self.recompute_block_seconds = 0.0
        # Block-seconds of anonymous blocks that preemption discarded (their KV is lost).
        self.discarded_block_seconds = 0.0
        self._tick_at = 0.0
        self._clock = 0  # release counter
        self._heap: list[tuple[float, int, int, KVNode]] = []  # LRU: (stamp, tiebreak, id, node)
        # Keyed orders: the evictable leaves (unreferenced, childless), kept as nodes
        # change, so that an eviction ranks them without walking the whole tree.
        self._keyed = not self.eviction.static
        self._leaves: set[KVNode] = set()
        # The same leaves by release stamp, ascending (no two share one: see
        # _first_ranked), so that a floored eviction asks them in release order without
        # sorting the set at every eviction: a leaf's stamp cannot change while it is one.
        # (The nodes themselves, bisected by stamp: the probe reads them with no lookup.)
        self._leaf_order: list[KVNode] = []
        #: Called with (node, blocks) for every block run evicted (e.g. to offload it).
        self.on_evict: Callable[[KVNode, int], None] | None = None

    # ---- accounting -------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        """Blocks that cannot be given out without eviction."""
        return self.cached_blocks + self.anonymous_blocks

    @property
    def free_blocks(self) -> int:
        """Blocks holding nothing."""
        return self.capacity - self.cached_blocks - self.anonymous_blocks

    @property
    def evictable_blocks(self) -> int:
        return self.cached_blocks - self.locked_blocks

    @property
    def available_blocks(self) -> int:
        """Blocks that an allocation could get: free plus evictable."""
        return self.capacity - self.locked_blocks - self.anonymous_blocks

    def tick(self, now: float) -> None:
        """Advance the utilization integrals to ``now`` (before any change)."""
        if now > self._tick_at:
            self.busy_block_seconds += (self.inuse_blocks + self.anonymous_blocks) * (
                now - self._tick_at
            )
            self.recompute_block_seconds += self.recompute_blocks * (now - self._tick_at)
            self._tick_at = now

    def discard_held(self, block_seconds: float) -> None:
        """A preempted call's anonymous blocks were discarded: the block-seconds they
        were held for served KV that must be computed again."""
        self.discarded_block_seconds += block_seconds

    def hold_recomputed(self, blocks: int, now: float) -> None:
        """``blocks`` more (or fewer, if negative) blocks held by calls recomputing."""
        self.tick(now)
        self.recompute_blocks += blocks
        if self.recompute_blocks < 0:
            raise AssertionError("more recomputing blocks released than held")

    # ---- lookup -------------------------------------------------------------------
    def match(self, runs: Sequence[Run]) -> Match:
        """Longest cached prefix of ``runs``. No side effects."""
        return Match(*self._walk(runs))

    def match_blocks(self, runs: Sequence[Run]) -> int:
        """Blocks of the longest cached prefix of ``runs``: :meth:`_walk`'s count.

        (Placement asks this of every candidate's GPU and host tiers: the walk without
        the node it ends in, so without the tuple and the call :meth:`_walk` costs.)"""
        node = self.root
        matched = 0
        for namespace, first, count in runs:
            while count > 0:
                child = node.children.get((namespace, first))
                if child is None:
                    return matched
                if count < child.count:
                    return matched + count
                matched += child.count
                node = child
                first += child.count
                count -= child.count
        return matched

    def match_idle(self, runs: Sequence[Run]) -> tuple[int, int]:
        """(blocks of the longest cached prefix of ``runs``, how many of them are in
        unreferenced nodes). Locking the prefix takes the latter out of the evictable
        blocks, so an admission check counts them as blocks it needs (as vLLM counts
        the evictable blocks of a prefix hit). No side effects: nothing is touched."""
        node = self.root
        matched = idle = 0
        for namespace, first, count in runs:
            while count > 0:
                child = node.children.get((namespace, first))
                if child is None:
                    return matched, idle
                common = count if count < child.count else child.count
                matched += common
                if child.ref == 0:
                    idle += common
                if common < child.count:
                    return matched, idle
                node = child
                first += common
                count -= common
        return matched, idle

    def _walk(self, runs: Sequence[Run]) -> tuple[int, KVNode, int]:
        """(blocks matched, node the match ends in, blocks into that node)."""
        node = self.root
        matched = 0
        for namespace, first, count in runs:
            while count > 0:
                child = node.children.get((namespace, first))
                if child is None:
                    return matched, node, node.count
                common = count if count < child.count else child.count
                matched += common
                if common < child.count:
                    return matched, child, common
                node = child
                first += common
                count -= common
        return matched, node, node.count

    # ---- locking --------------------------------------------------------------------
    def lock(self, runs: Sequence[Run], now: float = 0.0, user: bool = True) -> tuple[KVNode, int]:
        """Lock the longest cached prefix of ``runs``; return (deepest node, blocks).

        A match that ends inside a node splits it, so that the lock covers whole
        nodes. The caller must :meth:`unlock` the returned node later.
        """
        found = self.match(runs)
        node = found.node
        if found.offset < node.count:
            node = self._split(node, found.offset)
        self.acquire(node, now, user)
        return node, found.blocks

    def acquire(self, node: KVNode, now: float = 0.0, user: bool = True) -> None:
        """Take one more reference on ``node`` and everything above it.

        ``user`` is True for a running call and False for a retention pin; only the
        former counts as memory in use.
        """
        self.tick(now)
        n: KVNode | None = node
        while n is not None:
            if n.ref == 0:
                self.locked_blocks += n.count
                if self._keyed and n in self._leaves:
                    self._drop_leaf(n)
            n.ref += 1
            if user:
                if n.users == 0 and n is not self.root:
                    self.inuse_blocks += n.count
                    self.reused_idle_block_seconds += n.count * (now - n.idle_since)
                n.users += 1
            n = n.parent

    def unlock(self, node: KVNode, now: float = 0.0, user: bool = True) -> None:
        """Drop one reference on ``node`` and everything above it.

        Nodes whose count drops to zero get release stamps deepest first, so LRU
        eviction takes a path's tail before its head, as vLLM's free queue does.
        """
        self.tick(now)
        n: KVNode | None = node
        while n is not None:
            n.ref -= 1
            if n.ref < 0:
                raise AssertionError(f"reference count below zero on {n!r}")
            if user:
                n.users -= 1
                if n.users == 0 and n is not self.root:
                    self.inuse_blocks -= n.count
                    n.idle_since = now
            if n.ref == 0:
                self.locked_blocks -= n.count
                self._clock += 1
                n.stamp = self._clock
                if not n.children:
                    self._push_leaf(n)
            n = n.parent

    def _split(self, node: KVNode, offset: int) -> KVNode:
        """Split ``node`` after ``offset`` blocks; return the new upper part.

        The original object keeps the lower part, so that any holder of a reference
        to it (a lock covering the whole node) stays correct.
        """
        parent = node.parent
        assert parent is not None and 0 < offset < node.count
        upper = KVNode(node.namespace, node.first, offset, parent)
        upper.ref = node.ref
        upper.stamp = node.stamp
        upper.users = node.users
        upper.idle_since = node.idle_since
        del parent.children[node.key]
        parent.children[upper.key] = upper
        node.first += offset
        node.count -= offset
        node.parent = upper
        upper.children[node.key] = node
        self._renumber_depth(node)
        return upper

    def _renumber_depth(self, node: KVNode) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            assert n.parent is not None
            n.depth = n.parent.depth + 1
            stack.extend(n.children.values())

    # ---- insertion ------------------------------------------------------------------
    def insert(
        self, under: KVNode, runs: Sequence[Run], now: float = 0.0, user: bool = True
    ) -> tuple[KVNode, int]:
        """Cache ``runs`` below ``under`` (which the caller holds locked).

        Returns (deepest node, newly cached blocks). The new path is locked once
        for the caller, who must drop its lock on ``under`` afterwards if it no
        longer needs it (the new node's lock covers ``under`` too). Blocks already
        cached (inserted meanwhile by another call) are reused, not duplicated.
        The caller gives up that many anonymous blocks via :meth:`release_anonymous`.
        """
        node = under
        added = 0
        for namespace, first, count in runs:
            while count > 0:
                child = node.children.get((namespace, first))
                if child is None:
                    self.tick(now)
                    node = self._append_child(node, namespace, first, count, now, node is under)
                    added += count
                    break
                common = count if count < child.count else child.count
                if common < child.count:
                    child = self._split(child, common)
                node = child
                first += common
                count -= common
        self.acquire(node, now, user)
        return node, added

    def _append_child(
        self, node: KVNode, namespace: str, first: int, count: int, now: float, held: bool
    ) -> KVNode:
        # Extend a run in place when the parent is a private leaf continuing it: keeps
        # one node per run rather than one per call for long agent conversations.
        # Private means the caller's own lock is its only reference (``held``): a node
        # reached below ``under`` was cached by another call, whose lock must not grow
        # to cover blocks it does not hold.
        if (
            held
            and node is not self.root
            and not node.children
            and node.ref == 1
            and node.namespace == namespace
            and node.first + node.count == first
        ):
            node.count += count
            self.cached_blocks += count
            self.locked_blocks += count
            if node.users > 0:
                self.inuse_blocks += count
            return node
        child = KVNode(namespace, first, count, node)
        child.idle_since = now
        if self._keyed and not node.children and node in self._leaves:
            self._drop_leaf(node)  # (an unreferenced node reached below ``under``)
        node.children[child.key] = child
        self.cached_blocks += count
        # the caller's acquire() below takes the reference and counts it locked
        return child

    def extend_private(self, node: KVNode, namespace: str, first: int, count: int,
                       now: float) -> bool:
        """Cache ``count`` blocks continuing ``node`` in place, as :meth:`insert` of the one
        run ``(namespace, first, count)`` under ``node`` would when ``node`` is a private
        leaf continuing it (see :meth:`_append_child`), followed by the caller's unlock of
        ``node``: the new path is ``node`` itself, so that acquire and unlock cancel (every
        node of a call's lock has references and users left, so neither stamps nor idles
        one). False, changing nothing, when it is not such a leaf: use :meth:`insert`.

        (A prompt chunk's blocks are cached at every step; this skips the two walks to
        the root that the general insert and unlock take.)"""
        if (
            node.children
            or node.ref != 1
            or node.users != 1
            or node.first + node.count != first
            or node.namespace != namespace
            or node is self.root
        ):
            return False
        self.tick(now)
        node.count += count
        self.cached_blocks += count
        self.locked_blocks += count
        self.inuse_blocks += count
        return True

    # ---- anonymous blocks and eviction ------------------------------------------------
    def allocate(self, blocks: int, now: float = 0.0) -> bool:
        """Take ``blocks`` anonymous blocks, evicting cached ones if needed.

        Returns False, changing nothing, when even full eviction would not do.
        """
        if blocks <= 0:
            return True
        if blocks > self.available_blocks:
            return False
        shortfall = blocks - self.free_blocks
        if shortfall > 0:
            self.evict(shortfall, now)
        self.tick(now)
        self.anonymous_blocks += blocks
        return True

    def release_anonymous(self, blocks: int, now: float = 0.0) -> None:
        self.tick(now)
        if blocks > self.anonymous_blocks:
            raise AssertionError("releasing more anonymous blocks than held")
        self.anonymous_blocks -= blocks

    def adopt(self, blocks: int, now: float = 0.0) -> None:
        """Turn ``blocks`` anonymous blocks into cached ones (after :meth:`insert`)."""
        self.release_anonymous(blocks, now)

    def evict(self, blocks: int, now: float = 0.0) -> int:
        """Evict at least ``blocks`` cached blocks (fewer if not enough). Returns count."""
        if self.eviction.static:
            return self._evict_static(blocks)
        return self._evict_keyed(blocks, now)

    def _push_leaf(self, node: KVNode) -> None:
        if self._keyed:
            if node in self._leaves:
                return
            stamp, order = node.stamp, self._leaf_order
            at = bisect_left(order, stamp, key=_stamp)
            if at < len(order) and order[at].stamp == stamp:
                raise AssertionError(f"{node!r} shares stamp {stamp} with another leaf")
            self._leaves.add(node)
            order.insert(at, node)
        else:
            heapq.heappush(self._heap, (node.stamp, -node.depth, id(node), node))

    def _drop_leaf(self, node: KVNode) -> None:
        """Take ``node``, an evictable leaf, out of the keyed orders' leaf index."""
        self._leaves.remove(node)
        order = self._leaf_order
        del order[bisect_left(order, node.stamp, key=_stamp)]

    def _evict_static(self, blocks: int) -> int:
        done = 0
        heap = self._heap
        while done < blocks and heap:
            stamp, _, _, node = heap[0]
            if node.ref != 0 or node.children or node.stamp != stamp or node.count == 0:
                heapq.heappop(heap)  # stale entry
                continue
            done += self._evict_from(node, blocks - done)
            if node.count == 0:
                heapq.heappop(heap)
                self._detach(node)
        return done

    def _evict_keyed(self, blocks: int, now: float) -> int:
        if not self._leaves or blocks <= 0:
            return 0
        key = self.eviction.key_function()
        first = self._first_ranked(key, now)
        if first.count >= blocks:
            # The first-ranked leaf alone suffices (most evictions take a block or two):
            # what the heap below would do, without building it.
            done = self._evict_from(first, blocks)
            if first.count == 0:
                self._detach(first)
            return done
        # (the ranking is total, id() last, so the set's order does not matter)
        heap = [(key(n, now), n.stamp, id(n), n) for n in self._leaves]
        heapq.heapify(heap)
        done = 0
        while done < blocks and heap:
            node = heap[0][3]
            done += self._evict_from(node, blocks - done)
            if node.count == 0:
                heapq.heappop(heap)
                parent = self._detach(node)
                if parent is not None:
                    heapq.heappush(heap, (key(parent, now), parent.stamp, id(parent), parent))
        return done

    def _first_ranked(self, key: Callable[[KVNode, float], float], now: float) -> KVNode:
        """The evictable leaf least by (key, stamp, id): the leaves are not empty.

        With a floor the leaves are asked in release order, the earliest first, until one
        is at the floor: it ranks first, since no key is smaller and every leaf after it
        was released later (no two evictable leaves share a stamp: nodes of one stamp lie
        on one root path, a split's upper part above the lower, so at most one of them is a
        leaf; ``check`` asserts it). Without a floor, or none at it, every key is asked."""
        floor = self.eviction.floor
        if floor is None:
            return min([(key(n, now), n.stamp, id(n), n) for n in self._leaves])[3]
        order = self._leaf_order  # the leaves in release order
        best = order[0]
        best_key = key(best, now)
        if best_key != floor:
            for node in islice(order, 1, None):
                k = key(node, now)
                if k < best_key:  # (stamps ascend and differ: an equal key ranks after)
                    best, best_key = node, k
                    if k <= floor:
                        break
        if best_key < floor:
            raise AssertionError(
                f"eviction order {self.eviction.name!r} keyed {best!r} {best_key} below "
                f"its floor {floor}")
        return best

    def _evict_from(self, node: KVNode, want: int) -> int:
        take = min(want, node.count)
        if self.on_evict is not None:
            self.on_evict(node, take)
        node.count -= take
        self.cached_blocks -= take
        self.evicted_blocks += take
        return take

    def _detach(self, node: KVNode) -> KVNode | None:
        """Remove an emptied leaf; return its parent if that became an evictable leaf."""
        parent = node.parent
        assert parent is not None
        del parent.children[node.key]
        node.parent = None
        if self._keyed and node in self._leaves:
            self._drop_leaf(node)
        if parent is not self.root and parent.ref == 0 and not parent.children:
            self._push_leaf(parent)
            return parent
        return None

    def drop(self, node: KVNode) -> int:
        """Free now the unreferenced leaf ``node`` and the ancestors in its namespace
        that it leaves as unreferenced leaves: a workflow's private chain, without
        touching the shared prefixes above it."""
        freed = 0
        namespace = node.namespace
        current: KVNode | None = node
        while (
            current is not None
            and current is not self.root
            and current.namespace == namespace
            and current.ref == 0
            and not current.children
        ):
            freed += self._evict_from(current, current.count)
            current = self._detach(current)
        return freed

    # ---- inspection -------------------------------------------------------------------
    def nodes(self) -> Iterator[KVNode]:
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def evictable_leaves(self) -> list[KVNode]:
        return [n for n in self.nodes() if n.ref == 0 and not n.children]

    def check(self) -> None:
        """Assert the invariants (for tests): counts add up, refs are consistent."""
        cached = locked = inuse = 0
        for n in self.nodes():
            assert n.count > 0, f"empty node {n!r}"
            assert n.ref >= 0
            assert n.parent is not None and n.parent.children.get(n.key) is n
            # every lock covers a whole root path, so a node holds its children's locks
            assert n.ref >= sum(c.ref for c in n.children.values()), n
            assert 0 <= n.users <= n.ref, n
            cached += n.count
            if n.ref > 0:
                locked += n.count
            if n.users > 0:
                inuse += n.count
        assert cached == self.cached_blocks, (cached, self.cached_blocks)
        if self._keyed:
            assert self._leaves == set(self.evictable_leaves()), "evictable-leaf set"
            # (_first_ranked's floor probe relies on it)
            assert len({n.stamp for n in self._leaves}) == len(self._leaves), "shared stamp"
            order = self._leaf_order
            assert len(order) == len(self._leaves) and set(order) == self._leaves, "leaf index"
            assert [n.stamp for n in order] == sorted(n.stamp for n in order), "leaf stamps"
        assert locked == self.locked_blocks, (locked, self.locked_blocks)
        assert inuse == self.inuse_blocks, (inuse, self.inuse_blocks)
        assert self.used_blocks <= self.capacity, (self.used_blocks, self.capacity)


_stamp = attrgetter("stamp")


def skip_runs(runs: Sequence[Run], blocks: int) -> tuple[Run, ...]:
    """The runs after their first ``blocks`` blocks."""
    out: list[Run] = []
    for namespace, first, count in runs:
        if blocks >= count:
            blocks -= count
            continue
        out.append((namespace, first + blocks, count - blocks))
        blocks = 0
    return tuple(out)


def take_runs(runs: Sequence[Run], blocks: int) -> tuple[tuple[Run, ...], int]:
    """The first ``blocks`` blocks of ``runs`` (and how many there were)."""
    out: list[Run] = []
    taken = 0
    for namespace, first, count in runs:
        if taken >= blocks:
            break
        n = min(count, blocks - taken)
        out.append((namespace, first, n))
        taken += n
    return tuple(out), taken
