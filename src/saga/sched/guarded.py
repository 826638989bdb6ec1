"""``NAME+guard``: any policy with SAGA's decode guard inside the engine.

SAGA's scheduler inside the engine caps a step's prompt tokens while several calls decode
(:mod:`saga.sched.saga.chunking`), so that decodes do not wait out long prefill chunks.
That is an engine setting any deployment could adopt, so a skeptic asks what it gives the
baselines: :class:`GuardedPolicy` wraps a policy and answers the engine's
``prefill_limit`` with the very same rule (:class:`GuardRule`) and SAGA's default fields; every
other decision is the wrapped policy's. It composes with the memory gate
(``throughput+gate+guard``). Only the engine reads this hook: behind the gateway over
stock vLLM it has no effect, so the variants are for the simulator's comparisons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saga.sched.policy import Policy
from saga.sched.saga.chunking import GuardRule, step_prefill_limit
from saga.sched.saga.config import SagaConfig
from saga.sched.wrapped import WrappedPolicy, variant

if TYPE_CHECKING:
    from saga.sched.view import ReplicaView

SUFFIX = "+guard"


class GuardedPolicy(WrappedPolicy):
    """``inner``'s decisions, and the decode guard of SAGA's defaults for each step."""

    name = "guarded"

    def __init__(self, inner: Policy, guard: GuardRule | None = None) -> None:
        super().__init__(inner)
        self.guard = guard or GuardRule.of(SagaConfig())

    def prefill_limit(self, replica: ReplicaView, now: float) -> int | None:
        return step_prefill_limit(replica, self.guard)


def guarded(inner: Policy, name: str) -> Policy:
    """``inner`` with the decode guard, registered as ``name``."""
    return variant(GuardedPolicy, inner, name)
