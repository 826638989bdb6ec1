"""``browser-agent``: WebArena-like browser agents.

Each step's prompt is ``[system prompt (shared across workflows)][history][page observation]``.
The history (task, earlier actions and reasoning) grows by each step's output plus a short
action record and keeps one run of block ids ``[0, h)``; the page observation (an
accessibility tree, thousands of tokens) is *replaced* every step, so it gets a fresh id range
and the prefix shared with the previous call is only the history part. The previous output
followed the old observation, so its cached KV is not reused either (as in a real engine).

Not fitted (no public browser-agent trace with token counts is in ``shared/traces``); the
defaults are stated from WebArena's setup: tasks of ~5-30 steps, accessibility-tree
observations of a few thousand tokens, short actions, a few seconds per page action.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads.generators.base import Generator, GeneratorParams, lognormal

# Observation block ids start here so that they never collide with history ids.
_OBS_BASE = 1 << 24


class BrowserParams(GeneratorParams):
    """browser-agent parameters (stated, see the module docstring)."""

    tenant: str = Field("browser", min_length=1, description="Tenant of every workflow.")
    agent: str = Field("web-agent", min_length=1, description="Agent type.")
    system_tokens: int = Field(2500, ge=1, description="Shared system prompt and action space.")
    steps_median: float = Field(12.0, gt=0, description="Median steps (calls) per task.")
    steps_sigma: float = Field(0.6, ge=0, description="Log-normal sigma of steps per task.")
    max_steps: int = Field(40, ge=1, description="Step limit per task (WebArena uses 30-50).")
    task_tokens: int = Field(300, ge=1, description="Task intent at the start of the history.")
    obs_median: float = Field(5000.0, gt=0, description="Median page observation tokens.")
    obs_sigma: float = Field(0.5, ge=0, description="Log-normal sigma of observation tokens.")
    max_obs_tokens: int = Field(16_000, ge=1, description="Cap on an observation (truncation).")
    output_median: float = Field(150.0, gt=0, description="Median output (reasoning + action).")
    output_sigma: float = Field(0.5, ge=0, description="Log-normal sigma of output tokens.")
    action_tokens: int = Field(40, ge=0, description="Action record appended to the history "
                               "besides the output.")
    gap_median: float = Field(3.0, gt=0, description="Median seconds per page action.")
    gap_sigma: float = Field(0.8, ge=0, description="Log-normal sigma of the action time.")
    actions: str = Field("click,type,goto,scroll", min_length=1,
                         description="Comma-separated action (tool) names.")


class BrowserAgent(Generator):
    """WebArena-like browser agent (see the module docstring)."""

    name: ClassVar[str] = "browser-agent"
    description: ClassVar[str] = "WebArena-like browser agents: page observation replaced per step"
    Params: ClassVar[type[GeneratorParams]] = BrowserParams

    def workflow(self, p: GeneratorParams, rng: np.random.Generator, wid: str,
                 arrival: float) -> Workflow:
        assert isinstance(p, BrowserParams)
        bt = p.block_tokens
        steps = round(lognormal(rng, p.steps_median, p.steps_sigma, hi=p.max_steps))
        actions = [a.strip() for a in p.actions.split(",") if a.strip()]
        shared = ((f"sys:{p.agent}", p.system_tokens),)
        history, obs_next, calls = p.task_tokens, _OBS_BASE, []
        for k in range(steps):
            obs = round(lognormal(rng, p.obs_median, p.obs_sigma, hi=p.max_obs_tokens))
            out = round(lognormal(rng, p.output_median, p.output_sigma))
            h_blocks = history // bt
            # The observation's blocks start where the history's full blocks end.
            o_blocks = (history + obs) // bt - h_blocks
            runs = tuple(r for r in ((0, h_blocks), (obs_next, o_blocks)) if r[1] > 0)
            obs_next += o_blocks + out // bt + 1
            after, gap, tool = (((f"c{k - 1}",), lognormal(rng, p.gap_median, p.gap_sigma,
                                 lo=0.0), actions[int(rng.integers(len(actions)))])
                                if k else ((), 0.0, None))
            calls.append(Call(f"c{k}", Prompt(p.system_tokens + history + obs, shared, runs),
                              out, after, gap, tool))
            history += out + p.action_tokens
        return Workflow(wid, p.tenant, p.agent, arrival, tuple(calls), p.slo, bt,
                        end_signal="explicit")
