"""Slot fit: a new workflow's candidates on replicas that keep KV in a fixed number of slots.

A replica with S slots (llama.cpp's ``--parallel``) keeps at most S workflows' KV between
their calls: one more homed there hands a slot on at each of its calls, and every workflow
of that replica may then find its KV gone (or restore it from a save). On such replicas a
new workflow goes, first, to a replica whose homed workflows leave a slot free; when none
does, to one already beyond its slots, so that the others keep fitting theirs (the
thrashing stays on one replica instead of spreading to all), as long as that replica then
homes at most ``slack`` workflows more than the least loaded one; else to any. The
workflows counted are those homed and not known to have ended, what the gateway knows;
within the candidates kept, placement's own rule (completion, working set) chooses.
Replicas without slots (vLLM, the simulator: ``slots`` None) are left as they are.

A workflow moved off its home (a steal) takes a slot on its new replica too: with
``SagaConfig.steal_slots`` it may move only to a replica whose homed workflows leave a slot
free (:func:`steal_targets`), so a steal never hands another workflow's slot on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.sched.view import ReplicaView


def fitting(
    candidates: list[ReplicaView], homed_flows: Sequence[int], slack: int,
) -> list[ReplicaView]:
    """The candidates a new workflow may go to, by the rule above; ``homed_flows[i]`` is
    the number of workflows homed on replica ``i``. All candidates when any of them has
    no slot count (a mixed cluster is not compared by slots): the list itself, not a copy."""
    if not candidates:
        return candidates
    slots: list[int] = []
    for replica in candidates:
        count = replica.slots
        if count is None:
            return candidates
        slots.append(count)
    homed = [homed_flows[r.index] for r in candidates]
    free = [r for r, n, s in zip(candidates, homed, slots, strict=True) if n < s]
    if free:
        return free
    least = min(homed)
    over = [r for r, n, s in zip(candidates, homed, slots, strict=True)
            if n > s and n + 1 - least <= slack]
    return over or candidates


def steal_targets(
    candidates: list[ReplicaView], home: int, homed_flows: Sequence[int],
) -> list[ReplicaView]:
    """The candidates a workflow homed on ``home`` may be placed on: its home, and the
    others whose homed workflows leave a slot free. All candidates when any of them has no
    slot count: the list itself, not a copy."""
    kept: list[ReplicaView] = []
    for replica in candidates:
        count = replica.slots
        if count is None:
            return candidates
        if replica.index == home or homed_flows[replica.index] < count:
            kept.append(replica)
    return kept
