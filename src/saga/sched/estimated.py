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

The gateway learns the ratio of the engine's prompt tokens to its estimates from the answers
(``usage.prompt_tokens``: :class:`saga.wire.token_scale.TokenScale`, the gateway's
``learn_token_scale``, on by default) and scales its next estimates by it; ``learn_scale``
models that here: each call's estimate is scaled by the ratio of the calls finished before
it was ready (the engine's count of a finished call is what its answer said), and by
``prior`` (the gateway's ``token_scale_prior``) before any has finished.

The gateway also names a prompt's KV blocks from its text (:func:`saga.wire.prefix.text_runs`:
blocks of ``4 x block_tokens`` characters), not from the engine's tokens, and the routers
that keep their own index of what they routed (llm-d's approximate prefix scorer, SGLang's
cache-aware router) index those names, in an index sized in blocks: on this text a gateway
block covers ~1.6x the characters of an engine block, so the deployed index holds ~1.6x more
of the workflows' prompts than one filled with the engine's blocks. ``runs`` gives the
gateway-side hooks each call's blocks as the gateway names them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from saga.engine.kvcache import Run
from saga.sched.policy import CallInfo, Policy
from saga.sched.wrapped import WrappedPolicy
from saga.wire.token_scale import TokenScale

if TYPE_CHECKING:
    from saga.sched.view import CallView

#: (workflow id, call id) -> the prompt tokens the gateway estimates for that call
Estimates = Mapping[tuple[str, str], int]
#: (workflow id, call id) -> the call's prompt blocks as the gateway names them
GatewayRuns = Mapping[tuple[str, str], tuple[Run, ...]]


class PromptEstimates(WrappedPolicy):
    """``inner`` with the gateway's prompt estimates in its gateway-side hooks."""

    def __init__(self, inner: Policy, estimates: Estimates, learn_scale: bool = False,
                 runs: GatewayRuns | None = None, prior: float = 1.0) -> None:
        super().__init__(inner)
        self.estimates = estimates
        self.runs = runs
        self.scale = TokenScale(prior) if learn_scale else None
        # the prompt tokens each call in flight was given when it was ready: the gateway
        # makes a call's CallInfo once, so its later hooks see the same count
        self._given: dict[tuple[str, str], int] = {}

    def _seen(self, call: CallInfo) -> CallInfo:
        """``call`` as the gateway saw it (unchanged if no estimate is known for it)."""
        key = (call.workflow, call.call_id)
        runs = self.runs.get(key, call.runs) if self.runs is not None else call.runs
        given = self._given.get(key)
        if given is None:
            estimate = self.estimates.get(key)
            if estimate is None:
                return call if runs is call.runs else dataclasses.replace(call, runs=runs)
            given = self.scale.tokens(estimate) if self.scale is not None else estimate
            self._given[key] = given
        if given == call.prompt_tokens and runs is call.runs:
            return call
        return dataclasses.replace(call, prompt_tokens=given, runs=runs)

    def gateway_tokens(self, call: CallView) -> int | None:
        """The prompt tokens the gateway gave the policy for ``call`` while it is in flight
        (what its view of the backend counts the call for: saga.sched.gateway_view), None
        if it gave none."""
        info = call.info
        return None if info is None else self._given.get((info.workflow, info.call_id))

    # ---- the gateway's hooks: the estimate -------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.inner.on_call_ready(self._seen(call), now)

    def place(self, call: CallInfo, now: float) -> int:
        return self.inner.place(self._seen(call), now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        seen = self._seen(call)
        key = (call.workflow, call.call_id)
        self._given.pop(key, None)
        estimate = self.estimates.get(key)
        if self.scale is not None and estimate is not None:  # the answer's usage count
            self.scale.observe(estimate, call.prompt_tokens)
        self.inner.on_call_finished(seen, replica, now)

    # everything else: the wrapped policy's, unchanged (WrappedPolicy)


def with_prompt_estimates(
    inner: Policy, estimates: Estimates, learn_scale: bool = False,
    runs: GatewayRuns | None = None, prior: float = 1.0,
) -> PromptEstimates:
    """``inner`` seeing the gateway's ``estimates`` (scaled as the gateway learns to when
    ``learn_scale``, from ``prior`` before the first answer) and, when given, its
    ``runs``, named as ``inner`` (a class per wrapped policy: the engine reads
    ``static_order`` and the simulator ``name`` from the class)."""
    cls = type(f"Estimated_{type(inner).__name__}", (PromptEstimates,),
               {"name": inner.name, "static_order": inner.static_order,
                "offline": inner.offline})
    policy: PromptEstimates = cls(inner, estimates, learn_scale, runs, prior)
    return policy
