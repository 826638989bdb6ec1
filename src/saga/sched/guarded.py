"""``NAME+guard``: any policy with SAGA's decode guard inside the engine.

SAGA's scheduler inside the engine caps a step's prompt tokens while several calls decode
(:mod:`saga.sched.saga.chunking`), so that decodes do not wait out long prefill chunks.
That is an engine setting any deployment could adopt, so a skeptic asks what it gives the
baselines: :class:`GuardedPolicy` wraps a policy and answers the engine's
``prefill_limit`` with the very same rule and SAGA's default share and threshold; every
other decision is the wrapped policy's. It composes with the memory gate
(``throughput+gate+guard``). Only the engine reads this hook: behind the gateway over
stock vLLM it has no effect, so the variants are for the simulator's comparisons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saga.sched.policy import Policy
from saga.sched.saga.chunking import decode_guard, guard_tokens
from saga.sched.saga.config import SagaConfig
from saga.sched.wrapped import WrappedPolicy, variant

if TYPE_CHECKING:
    from saga.sched.view import ReplicaView

SUFFIX = "+guard"


class GuardedPolicy(WrappedPolicy):
    """``inner``'s decisions, and the decode guard of SAGA's defaults for each step."""

    name = "guarded"

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner)
        defaults = SagaConfig()
        self.guard_share = defaults.decode_guard_share
        self.guard_decodes = defaults.decode_guard_decodes

    def prefill_limit(self, replica: ReplicaView, now: float) -> int | None:
        tokens = guard_tokens(replica.max_num_batched_tokens, self.guard_share)
        return decode_guard(replica.running, tokens, self.guard_decodes)


def guarded(inner: Policy, name: str) -> Policy:
    """``inner`` with the decode guard, registered as ``name``."""
    return variant(GuardedPolicy, inner, name)
