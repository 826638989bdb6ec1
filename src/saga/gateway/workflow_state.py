"""What a router keeps of an active workflow between its calls: the gateway's call
pipeline and the Ray Serve router hold the same record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saga.sched.policy import WorkflowInfo

if TYPE_CHECKING:
    from saga.gateway.retain_step import RetainStep


@dataclass(slots=True)
class WorkflowState:
    """An active workflow as one gateway (or one Ray router replica) sees it."""

    info: WorkflowInfo
    calls: int = 0
    in_flight: int = 0
    last_seen: float = 0.0
    admitted: bool = False
    placed_here: int | None = None  # the replica this router's policy last chose for it
    retaining: RetainStep | None = None  # the gateway's: the last answered call's retention step
