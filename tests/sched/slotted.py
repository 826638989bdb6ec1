"""Shared by the slot tests (slot fit, slots in steals, the gate by slots): a replica as the
slot rules read it, and a small simulated cluster whose replicas declare slots."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.replica import Replica
from saga.sched.policy import PolicyContext
from saga.sched.saga import SagaConfig, SagaPolicy


@dataclass
class Slotted:
    """A replica as the slot rules read it: its index, its slot count, whether it is up."""

    index: int
    slots: int | None
    up: bool = True


def indices(candidates: Iterable[object]) -> list[int]:
    return [r.index for r in candidates]  # type: ignore[attr-defined]


def slotted_cluster(config: SagaConfig, slots: int | None
                    ) -> tuple[SagaPolicy, list[Replica]]:
    """SAGA bound to two simulated 8B replicas that declare ``slots`` slots each."""
    cost = cost_model_for("llama-3.1-8b", "h100-sxm", 1)
    policy = SagaPolicy(config)
    engine = EngineConfig(max_num_batched_tokens=8192, max_num_seqs=64)
    replicas = [Replica(i, engine, cost, policy, block_tokens=64, capacity_blocks=4096)
                for i in range(2)]
    for replica in replicas:
        replica.slots = slots
    policy.bind(PolicyContext(replicas=replicas, cost=cost, block_tokens=64))
    return policy, replicas
