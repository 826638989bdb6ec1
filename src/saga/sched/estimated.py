"""A policy that sees prompt lengths as a text gateway estimates them, not as the engine counts.

The gateway never tokenizes: it estimates a prompt's tokens from its text
(:func:`saga.wire.prefix.estimate_tokens`, characters / 4) and every :class:`CallInfo` it
gives the policy carries that estimate. On the real benchmark's agent text the tiny model's
tokenizer makes about 2.5 characters a token, so the gateway sees contexts about 1.6x
smaller than the engine holds, and a gate that counts working sets in tokens (SAGA's memory
gate) admits accordingly more workflows. A simulator that hands the policy the exact token
counts predicts a different deployment. :func:`with_prompt_estimates` wraps a policy so that
its gateway-side hooks (``on_call_ready``, ``place``, ``on_call_finished``) get each call's
estimate; the engine-side hooks (queue order, retention, eviction, read through the
engine's own view of a request) keep the engine's counts, as a scheduler inside the engine
has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from saga.sched.policy import CallInfo, Policy
from saga.sched.wrapped import WrappedPolicy

#: (workflow id, call id) -> the prompt tokens the gateway estimates for that call
Estimates = Mapping[tuple[str, str], int]


class PromptEstimates(WrappedPolicy):
    """``inner`` with the gateway's prompt estimates in its gateway-side hooks."""

    def __init__(self, inner: Policy, estimates: Estimates) -> None:
        super().__init__(inner)
        self.estimates = estimates

    def _seen(self, call: CallInfo) -> CallInfo:
        """``call`` as the gateway saw it (unchanged if no estimate is known for it)."""
        estimate = self.estimates.get((call.workflow, call.call_id))
        if estimate is None or estimate == call.prompt_tokens:
            return call
        return dataclasses.replace(call, prompt_tokens=estimate)

    # ---- the gateway's hooks: the estimate -------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.inner.on_call_ready(self._seen(call), now)

    def place(self, call: CallInfo, now: float) -> int:
        return self.inner.place(self._seen(call), now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.inner.on_call_finished(self._seen(call), replica, now)

    # everything else: the wrapped policy's, unchanged (WrappedPolicy)


def with_prompt_estimates(inner: Policy, estimates: Estimates) -> Policy:
    """``inner`` seeing the gateway's ``estimates``, named as ``inner`` (a class per
    wrapped policy: the engine reads ``static_order`` and the simulator ``name`` from
    the class)."""
    cls = type(f"Estimated_{type(inner).__name__}", (PromptEstimates,),
               {"name": inner.name, "static_order": inner.static_order,
                "offline": inner.offline})
    policy: Policy = cls(inner, estimates)
    return policy
