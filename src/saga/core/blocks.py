"""How many leading KV blocks two lists of block runs share: the prefix identity that
the simulator (which call can reuse which KV) and the trace readers (where a compacted
session's prompts stop sharing) both need, walked in one place."""

from __future__ import annotations

from collections.abc import Sequence

NamespacedRun = tuple[str, int, int]  # (namespace, first block id, count), as the KV cache keys it


def common_blocks(a: Sequence[NamespacedRun], b: Sequence[NamespacedRun]) -> int:
    """Blocks ``a`` and ``b`` share from their start: the same namespace and the same ids
    in the same order, whatever the run boundaries."""
    shared = 0
    ia = ib = 0
    na = nb = 0  # blocks consumed inside the current runs
    while ia < len(a) and ib < len(b):
        ns_a, first_a, count_a = a[ia]
        ns_b, first_b, count_b = b[ib]
        if ns_a != ns_b or first_a + na != first_b + nb:
            break
        step = min(count_a - na, count_b - nb)
        shared += step
        na += step
        nb += step
        if na == count_a:
            ia, na = ia + 1, 0
        if nb == count_b:
            ib, nb = ib + 1, 0
    return shared
