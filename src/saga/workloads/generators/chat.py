"""``chat``: background single- or multi-turn chat, lengths fitted to Azure's 2023 chat trace.

Turns per conversation are geometric with mean ``turns_mean`` (1 = single-shot requests).
The first prompt and outputs follow the Azure conversation trace's quantiles; each later turn
appends the previous output and a user message and keeps one growing run ``[[0, n]]`` of
blocks, after a human think time.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads.generators import fitted
from saga.workloads.generators.base import Generator, GeneratorParams, draw, lognormal


class ChatParams(GeneratorParams):
    """chat parameters."""

    tenant: str = Field("background", min_length=1, description="Tenant of every workflow.")
    agent: str = Field("chat", min_length=1, description="Agent type.")
    turns_mean: float = Field(1.0, ge=1, description="Mean turns per conversation (geometric).")
    max_turns: int = Field(50, ge=1, description="Most turns.")
    prompt_scale: float = Field(1.0, gt=0, description="Multiplies the fitted prompt lengths.")
    output_scale: float = Field(1.0, gt=0, description="Multiplies the fitted output lengths.")
    message_median: float = Field(80.0, gt=0, description="Median user message tokens.")
    think_median: float = Field(20.0, gt=0, description="Median seconds between turns.")


class Chat(Generator):
    """Background chat (see the module docstring)."""

    name: ClassVar[str] = "chat"
    description: ClassVar[str] = "background single/multi-turn chat (Azure 2023 lengths)"
    Params: ClassVar[type[GeneratorParams]] = ChatParams

    def workflow(self, p: GeneratorParams, rng: np.random.Generator, wid: str,
                 arrival: float) -> Workflow:
        assert isinstance(p, ChatParams)
        turns = min(p.max_turns, int(rng.geometric(1.0 / p.turns_mean)))
        context = round(draw(fitted.AZ_CONV_PROMPT, rng, scale=p.prompt_scale))
        calls = []
        for k in range(turns):
            out = round(draw(fitted.AZ_CONV_OUTPUT, rng, scale=p.output_scale))
            n = context // p.block_tokens
            after, gap, tool = (((f"c{k - 1}",), lognormal(rng, p.think_median, 1.0, lo=0.0),
                                 "human") if k else ((), 0.0, None))
            calls.append(Call(f"c{k}", Prompt(context, (), ((0, n),) if n else ()), out,
                              after, gap, tool))
            context += out + round(lognormal(rng, p.message_median, 0.8))
        return Workflow(wid, p.tenant, p.agent, arrival, tuple(calls), p.slo, p.block_tokens)
