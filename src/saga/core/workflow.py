"""The workflow model every part of SAGA shares (docs/workloads.md).

A *workflow* is one agent task: a DAG of LLM *calls*, each of which may wait for
earlier calls (``after``) and then for a tool to run (``gap`` seconds) before it is
issued. A call's prompt is described by the KV blocks it is made of, so that
prefix reuse is exact without carrying any text:

* ``shared``: named prefixes shared *across* workflows (a system prompt, tool
  schemas), each with its token count, placed first;
* ``blocks``: runs ``(first_id, count)`` of workflow-local block ids, each block
  ``block_tokens`` tokens long. Two prompts of one workflow share a prefix exactly
  as far as their runs agree;
* ``tokens``: the whole prompt length. Tokens beyond the shared prefixes and the
  full blocks are unique to this call (a partial last block) and never reused.

These classes are plain frozen dataclasses: cheap to build by the hundred
thousand in the simulator. Validation happens once, where data enters
(:mod:`saga.core.trace`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_BLOCK_TOKENS = 64

EndSignal = Literal["explicit", "idle"]
"""How a gateway learns that a workflow ended: ``explicit``, its client marks the last call
(the gateway's ``x-saga-end`` header); ``idle``, no marker, so only an idle timeout with no
new call tells (a human session that simply stops)."""
END_SIGNALS: tuple[EndSignal, ...] = ("explicit", "idle")

HUMAN_TOOL = "human"
"""The ``tool`` of a call that a human's message starts: no tool ran in its gap, the
previous response ended the turn (the convention of every reader and generator)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a call's prompt is made of, as KV blocks (see the module docstring)."""

    tokens: int
    shared: tuple[tuple[str, int], ...] = ()
    blocks: tuple[tuple[int, int], ...] = ()

    def shared_tokens(self) -> int:
        """Tokens in the named shared prefixes."""
        return sum(n for _, n in self.shared)

    def block_count(self) -> int:
        """Number of workflow-local blocks named by the runs."""
        return sum(count for _, count in self.blocks)


@dataclass(frozen=True, slots=True)
class Call:
    """One LLM call of a workflow.

    ``after`` lists the ids of calls that must finish before this one; ``gap`` is
    the tool time that follows the last of them (0 for the first call); ``tool``
    names the tool that ran in that gap, if any.
    """

    id: str
    prompt: Prompt
    output_tokens: int
    after: tuple[str, ...] = ()
    gap: float = 0.0
    tool: str | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    """One agent task: identity, tenant, arrival time and its calls in a valid order.

    ``slo`` is the tenant's task-completion-time objective as a slowdown factor
    (TCT over the TCT alone on an idle replica); ``None`` means best effort.
    ``calls`` is topologically ordered: every id in ``after`` names an earlier call.
    ``end_signal`` says how its end becomes known to the scheduler (:data:`EndSignal`).
    """

    id: str
    tenant: str
    agent: str
    arrival: float
    calls: tuple[Call, ...]
    slo: float | None = None
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    end_signal: EndSignal = "idle"

    def call_index(self) -> dict[str, int]:
        """Map from call id to its position in ``calls``."""
        return {c.id: i for i, c in enumerate(self.calls)}

    def total_prompt_tokens(self) -> int:
        return sum(c.prompt.tokens for c in self.calls)

    def total_output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.calls)

    def with_arrival(self, arrival: float) -> Workflow:
        """The same workflow arriving at another time (for arrival processes)."""
        return Workflow(
            id=self.id,
            tenant=self.tenant,
            agent=self.agent,
            arrival=arrival,
            calls=self.calls,
            slo=self.slo,
            block_tokens=self.block_tokens,
            extra=self.extra,
            end_signal=self.end_signal,
        )
