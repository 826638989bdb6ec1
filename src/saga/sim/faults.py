"""Replica failures for the simulator: a typed schedule of outages.

A :class:`Fault` takes replica ``replica`` down at ``at`` for ``duration`` simulated
seconds. At the failure the replica loses everything it held
(:meth:`saga.engine.replica.Replica.fail`): the calls it was serving or queueing go
back to the policy's ``place`` as recompute on the replicas that are up, its KV
(GPU and host tier) and pins are gone. At recovery it is up again with an empty
cache. Calls that become ready while no replica is up wait for the first recovery.
The gateway meets the same failures live (a backend that stops answering is marked
down, its calls are retried elsewhere); this lets policies be compared under them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field


class Fault(BaseModel):
    """One outage of one replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replica: int = Field(ge=0, description="Index of the replica that fails.")
    at: float = Field(ge=0.0, allow_inf_nan=False, description="Simulated second it fails.")
    duration: float = Field(
        gt=0.0, allow_inf_nan=False, description="Seconds it stays down before it rejoins."
    )

    @property
    def until(self) -> float:
        """The simulated second the replica is back."""
        return self.at + self.duration


def check_faults(faults: Sequence[Fault], replicas: int) -> list[Fault]:
    """The faults in time order; raise ValueError for an unknown replica or two
    outages of one replica that overlap."""
    ordered = sorted(faults, key=lambda f: (f.at, f.replica))
    last_end: dict[int, float] = {}
    for fault in ordered:
        if fault.replica >= replicas:
            raise ValueError(
                f"fault on replica {fault.replica}, but the cluster has {replicas} replicas"
            )
        if fault.at < last_end.get(fault.replica, -1.0):
            raise ValueError(
                f"faults on replica {fault.replica} overlap at t={fault.at:g}"
            )
        last_end[fault.replica] = fault.until
    return ordered
