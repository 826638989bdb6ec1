"""The gate by slots: hold a new workflow at the door while every slot is homed.

A replica with S slots (llama.cpp's ``--parallel``) keeps at most S workflows' KV between
their calls. Slot fit (:mod:`.slot_fit`) sends a new workflow to a free slot while there is
one; once every slot of every replica is homed by a workflow still in flight, a new one
can only take a slot from one of them, and from then on the workflows of that replica hand
their slots on at every call (each finds its KV gone, or restores it from a save). With
``SagaConfig.gate_slots`` the memory gate holds the new workflow instead, in its queue's
order, until a slot is free again: a workflow homed there ends (its client's end marker or
the gateway's idle timeout) or is judged ended (the gate's own predicted end, which stops
counting its working set: ``Flow.uncounted``).

What is counted is what a gateway knows: the slot count each replica declares, the
workflows admitted and not known (or judged) to have ended, and where each was last placed.
An admitted workflow not placed yet, or homed on a replica that is down, will need a slot
of its own, so it takes one of the free slots in the count. Replicas without slots (vLLM,
the simulator: ``slots`` None) are not compared by slots: the rule never holds there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.sched.view import ReplicaView


def every_slot_homed(replicas: Sequence[ReplicaView], homes: Iterable[int | None]) -> bool:
    """Whether the live workflows, homed at ``homes`` (one entry each: a replica index, or
    None while not placed), leave no slot free on the up replicas. False when any up
    replica declares no slot count, when none is up, and when no workflow is live (an
    empty cluster always admits)."""
    free: dict[int, int] = {}
    for replica in replicas:
        if not replica.up:
            continue
        if replica.slots is None:
            return False
        free[replica.index] = replica.slots
    if not free:
        return False
    live = 0
    unslotted = 0  # live workflows that will need a slot: not placed, or homed on a down one
    for home in homes:
        live += 1
        if home is not None and home in free:
            free[home] -= 1  # below 0: beyond that replica's slots, no slot freed elsewhere
        else:
            unslotted += 1
    return live > 0 and sum(max(0, n) for n in free.values()) <= unslotted
