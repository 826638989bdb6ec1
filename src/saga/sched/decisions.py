"""Decisions the scheduler core returns to a runtime, as plain data.

The core never acts: the simulator or the gateway reads these and carries them
out, so that one policy object serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RetentionKind = Literal["release", "pin", "offload", "drop"]


@dataclass(frozen=True, slots=True)
class Retention:
    """What to do with a call's KV when it finishes and its workflow goes on.

    * ``release``: leave the blocks cached and evictable (vLLM's behaviour);
    * ``pin``: keep them on the GPU, not evictable, for ``ttl`` seconds or until
      the workflow's next call arrives, whichever is first;
    * ``offload``: copy them to the host tier and leave the GPU copy evictable;
      ``prefetch_at`` (absolute time) asks for them back on the GPU by then;
    * ``drop``: free the workflow's private blocks at once.

    ``host_copy`` (with ``pin``): also copy the blocks to the host tier, so that the KV
    outlives a pin that expires or is given up before the workflow returns (the simulator
    carries it out; the gateway and the vLLM integration pin without the copy).
    """

    kind: RetentionKind = "release"
    ttl: float = 0.0
    prefetch_at: float | None = None
    host_copy: bool = False


RELEASE = Retention("release")
DROP = Retention("drop")


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a newly arrived workflow may start: ``admit``, ``defer`` (retry after
    ``retry_after`` seconds) or ``reject``, with a reason a user can read."""

    verdict: Literal["admit", "defer", "reject"] = "admit"
    reason: str = ""
    retry_after: float = 0.0


ADMIT = Admission()
