"""``coding-agent``: SWE-bench-like coding agents, fitted to the Claude Code trace.

One chain of calls. Every prompt starts with the agent's system prompt and tool schemas as a
named prefix shared across workflows (``sys:<agent>``); the workflow's own context follows
as one run of blocks ``[[base, n]]`` that grows call by call by the previous output plus the
tool result, so each call hits on the previous prompt *and* output KV. When the context
passes ``max_prompt_tokens`` it is compacted: a fresh id range of ``compact_tokens`` (as
Claude Code's /compact does; 0.4 % of calls in the trace). Between calls: a tool gap (tool
names drawn from ``tools``), or with probability ``p_human`` a human think time.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads.generators import fitted
from saga.workloads.generators.base import Generator, GeneratorParams, draw


class CodingParams(GeneratorParams):
    """coding-agent parameters; distributions default to the Claude Code fit."""

    tenant: str = Field("coding", min_length=1, description="Tenant of every workflow.")
    agent: str = Field("swe-agent", min_length=1, description="Agent type (program template).")
    system_tokens: int = Field(14948, ge=1, description="Shared system prompt + tool schemas "
                               "(fitted median of the Claude Code trace).")
    calls_scale: float = Field(1.0, gt=0, description="Multiplies the fitted calls per workflow.")
    min_calls: int = Field(1, ge=1, description="Fewest calls per workflow.")
    max_calls: int = Field(600, ge=1, description="Most calls per workflow.")
    context_scale: float = Field(1.0, gt=0, description="Multiplies the fitted first-prompt "
                                 "context and per-call growth.")
    output_scale: float = Field(1.0, gt=0, description="Multiplies the fitted output lengths.")
    max_output_tokens: int = Field(8192, ge=1, description="Cap on output tokens per call.")
    max_prompt_tokens: int = Field(200_000, ge=1024, description="Context limit; beyond it "
                                   "the context is compacted.")
    compact_tokens: int = Field(20_000, ge=1, description="Context size after a compaction.")
    gap_scale: float = Field(1.0, gt=0, description="Multiplies the fitted tool gaps.")
    max_gap: float = Field(600.0, gt=0, description="Cap on any gap in seconds (the trace's "
                           "rare multi-hour pauses would dominate a simulation).")
    p_human: float = Field(0.0, ge=0, le=1, description="Probability a gap is a human think "
                           "time (0 for autonomous SWE-bench agents; the trace has 0.134).")
    tools: str = Field("bash,edit,view,search", min_length=1, description="Comma-separated "
                       "tool names drawn uniformly for tool gaps.")


class CodingAgent(Generator):
    """SWE-bench-like coding agent (see the module docstring)."""

    name: ClassVar[str] = "coding-agent"
    description: ClassVar[str] = "SWE-bench-like coding agents fitted to the Claude Code trace"
    Params: ClassVar[type[GeneratorParams]] = CodingParams

    def workflow(self, p: GeneratorParams, rng: np.random.Generator, wid: str,
                 arrival: float) -> Workflow:
        assert isinstance(p, CodingParams)
        n_calls = round(draw(fitted.CC_CALLS, rng, scale=p.calls_scale, lo=p.min_calls,
                             hi=p.max_calls))
        tools = [t.strip() for t in p.tools.split(",") if t.strip()]
        shared = ((f"sys:{p.agent}", p.system_tokens),)
        limit = max(p.block_tokens, p.max_prompt_tokens - p.system_tokens)
        context = round(draw(fitted.CC_FIRST_PROMPT, rng, scale=p.context_scale, hi=limit))
        base, calls = 0, []
        for k in range(n_calls):
            out = round(draw(fitted.CC_OUTPUT, rng, scale=p.output_scale,
                             hi=p.max_output_tokens))
            after, gap, tool = self._gap(p, rng, k, tools)
            prompt = Prompt(p.system_tokens + context, shared,
                            ((base, context // p.block_tokens),) if context >= p.block_tokens
                            else ())
            calls.append(Call(f"c{k}", prompt, out, after, gap, tool))
            # The next prompt: this one, its output and the tool result (>= the output).
            grown = context + max(out, round(draw(fitted.CC_GROWTH, rng,
                                                  scale=p.context_scale)))
            if grown > limit:
                base += context // p.block_tokens + out // p.block_tokens + 1
                grown = min(p.compact_tokens, limit)
            context = grown
        return Workflow(wid, p.tenant, p.agent, arrival, tuple(calls), p.slo, p.block_tokens,
                        end_signal="explicit")

    @staticmethod
    def _gap(p: CodingParams, rng: np.random.Generator, k: int, tools: list[str]
             ) -> tuple[tuple[str, ...], float, str | None]:
        if k == 0:
            return (), 0.0, None
        if rng.random() < p.p_human:
            return (f"c{k - 1}",), draw(fitted.CC_HUMAN_GAP, rng, lo=0.0, hi=p.max_gap), "human"
        gap = draw(fitted.CC_TOOL_GAP, rng, scale=p.gap_scale, lo=0.0, hi=p.max_gap)
        return (f"c{k - 1}",), gap, tools[int(rng.integers(len(tools)))]
