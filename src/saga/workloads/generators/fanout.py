"""``fanout``: a planner, N parallel workers on their own branches, and a merge call.

* planner ``c0``: shared system prompt + task, blocks ``[[0, p]]``; its output is cached at
  ``[p, p + out/bt)`` (the simulator's convention);
* worker ``i`` (``w{i}.{j}`` for its ``j``-th call): starts ``after`` the planner; its prompt
  is the planner's prompt and output (shared with the planner and the other workers) then
  the worker's own context in a disjoint id range ``[(i+1) * 2^20, ...)`` that grows call by
  call with outputs and tool results;
* merge ``m``: ``after`` every worker's last call; the planner's prefix plus the workers'
  reports (their final outputs) in a fresh id range.

Stated parameters (multi-agent frameworks such as a research or coding orchestrator).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads.generators.base import Generator, GeneratorParams, lognormal

_BRANCH = 1 << 20


class FanoutParams(GeneratorParams):
    """fanout parameters (stated)."""

    tenant: str = Field("fanout", min_length=1, description="Tenant of every workflow.")
    agent: str = Field("orchestrator", min_length=1, description="Agent type.")
    system_tokens: int = Field(3000, ge=1, description="Shared system prompt tokens.")
    task_tokens: float = Field(4000.0, gt=0, description="Median task context of the planner.")
    min_workers: int = Field(2, ge=1, description="Fewest parallel workers.")
    max_workers: int = Field(8, ge=1, description="Most parallel workers (uniform between).")
    worker_calls: float = Field(4.0, gt=0, description="Median calls per worker.")
    max_worker_calls: int = Field(20, ge=1, description="Most calls per worker.")
    planner_output: float = Field(600.0, gt=0, description="Median planner output tokens.")
    output_median: float = Field(250.0, gt=0, description="Median worker output tokens.")
    tool_tokens: float = Field(1500.0, gt=0, description="Median tool result tokens a worker "
                               "call appends.")
    gap_median: float = Field(5.0, gt=0, description="Median worker tool time (s).")
    sigma: float = Field(0.7, ge=0, description="Log-normal sigma for all sizes and times.")

    @model_validator(mode="after")
    def _workers_order(self) -> FanoutParams:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must be <= max_workers")
        return self


class Fanout(Generator):
    """Planner, parallel workers, merge (see the module docstring)."""

    name: ClassVar[str] = "fanout"
    description: ClassVar[str] = "planner, N parallel workers on their own branches, merge"
    Params: ClassVar[type[GeneratorParams]] = FanoutParams

    def workflow(self, p: GeneratorParams, rng: np.random.Generator, wid: str,
                 arrival: float) -> Workflow:
        assert isinstance(p, FanoutParams)
        bt, s = p.block_tokens, p.sigma
        shared = ((f"sys:{p.agent}", p.system_tokens),)
        task = round(lognormal(rng, p.task_tokens, s))
        plan_out = round(lognormal(rng, p.planner_output, s))
        calls = [Call("c0", Prompt(p.system_tokens + task, shared, _run(0, task // bt)),
                      plan_out)]
        # Worker prompts start with the planner's prompt blocks and its output blocks.
        head = task // bt + plan_out // bt
        head_tokens = head * bt
        n = int(rng.integers(p.min_workers, p.max_workers + 1))
        lasts, reports = [], 0
        for i in range(n):
            m = round(lognormal(rng, p.worker_calls, s, hi=p.max_worker_calls))
            own, prev = 0, "c0"
            for j in range(m):
                own += round(lognormal(rng, p.tool_tokens, s)) if j else 200
                out = round(lognormal(rng, p.output_median, s))
                gap = lognormal(rng, p.gap_median, s, lo=0.0) if j else 0.0
                runs = _run(0, head) + _run((i + 1) * _BRANCH, own // bt)
                cid = f"w{i}.{j}"
                calls.append(Call(cid, Prompt(p.system_tokens + head_tokens + own, shared,
                                              runs), out, (prev,), gap,
                                  "tool" if j else "spawn"))
                prev, own = cid, own + out
            lasts.append(prev)
            reports += calls[-1].output_tokens
        merge_runs = _run(0, head) + _run((n + 1) * _BRANCH, reports // bt)
        calls.append(Call("m", Prompt(p.system_tokens + head_tokens + reports, shared,
                                      merge_runs), round(lognormal(rng, p.planner_output, s)),
                          tuple(lasts), 0.0, "join"))
        return Workflow(wid, p.tenant, p.agent, arrival, tuple(calls), p.slo, bt,
                        end_signal="explicit")


def _run(first: int, count: int) -> tuple[tuple[int, int], ...]:
    return ((first, count),) if count > 0 else ()
