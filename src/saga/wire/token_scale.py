"""Engine tokens per estimated token, learned from the engines' answers.

A text gateway estimates a prompt's tokens as characters / 4
(:func:`saga.wire.prefix.estimate_tokens`); the engine's tokenizer counts otherwise (the
tiny model makes about 2.5 characters a token of agent text, so the estimate is about 0.6
of the engine's count). Every OpenAI-compatible answer says how many prompt tokens the
engine counted (``usage.prompt_tokens``: vLLM, llama.cpp, SGLang, OpenAI), so the gateway
learns the ratio from the calls it has served and scales its next estimates by it: the
policy then counts contexts (a memory gate's working set, a placement's prefill) in the
engine's tokens, as they fill the engine's KV. Nothing is known of a call before its
answer but its text: the ratio is of answered calls only; until the first answer it is the
``prior`` (1, the plain estimate, unless the operator knows their tokenizer's: a burst that
arrives before any answer is otherwise counted in the estimate's tokens, and the contexts
the policy counted then stay in them beside the later, scaled ones).

The ratio is cumulative (total engine tokens over total estimated tokens of the calls
observed), so it is deterministic for a sequence of answers and weighs long prompts by
their length, as the KV does.
"""

from __future__ import annotations


class TokenScale:
    """The learned ratio of engine prompt tokens to estimated prompt tokens."""

    __slots__ = ("engine", "estimated", "prior")

    def __init__(self, prior: float = 1.0) -> None:
        if not prior > 0:
            raise ValueError(f"a token scale's prior must be positive, got {prior}")
        self.estimated = 0  # estimated prompt tokens of the answered calls observed
        self.engine = 0  # the engine's prompt tokens of the same calls
        self.prior = prior  # the factor before any answer

    def observe(self, estimated: int, engine: int) -> None:
        """A call estimated at ``estimated`` tokens was counted ``engine`` by its engine
        (an answer without a count, ``engine`` <= 0, teaches nothing)."""
        if estimated > 0 and engine > 0:
            self.estimated += estimated
            self.engine += engine

    def assign(self, estimated: int, engine: int) -> None:
        """Take totals counted elsewhere (a Ray router sums its replicas' reports)."""
        self.estimated, self.engine = (estimated, engine) if estimated > 0 and engine > 0 \
            else (0, 0)

    @property
    def factor(self) -> float:
        """Engine tokens per estimated token (the prior before any answer)."""
        return self.engine / self.estimated if self.estimated else self.prior

    def tokens(self, estimated: int) -> int:
        """``estimated`` tokens in the engine's count, as learned so far (at least 1)."""
        if not self.estimated:
            return max(1, round(estimated * self.prior))
        return max(1, round(estimated * self.engine / self.estimated))
