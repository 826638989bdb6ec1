"""Small helpers on block runs ``(first_id, count)`` shared by readers and generators."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Runs = tuple[tuple[int, int], ...]


def runs_from_ids(ids: Iterable[int]) -> Runs:
    """Compress a sequence of block ids into runs of consecutive ids."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return tuple((a, b) for a, b in out)


def drop_leading(runs: Sequence[tuple[int, int]], k: int) -> Runs:
    """The runs without their first ``k`` block positions."""
    out: list[tuple[int, int]] = []
    for first, count in runs:
        if k >= count:
            k -= count
            continue
        out.append((first + k, count - k))
        k = 0
    return tuple(out)


def leading_match(runs: Sequence[tuple[int, int]], base: int) -> int:
    """How many leading blocks are the consecutive ids ``base, base+1, ...``."""
    if not runs or runs[0][0] != base:
        return 0
    return runs[0][1]


def next_id(runs: Sequence[tuple[int, int]]) -> int:
    """The id right after the last run: where the simulator caches this call's output."""
    return runs[-1][0] + runs[-1][1] if runs else 0


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
