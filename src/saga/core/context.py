"""Context limits: calls longer than the model serving them can hold.

vLLM answers a request whose prompt plus requested output exceeds the model's
``max_model_len`` with an HTTP 400 ("This model's maximum context length is ...").
A workflow trace records what a call's prompt and output *were*; replayed on a
model with a shorter window, such a call is not a slow call but an impossible one.
The simulator never serves it (the workflow is rejected, see
:mod:`saga.sim.simulator`) and counts it; this module says which calls those are.
"""

from __future__ import annotations

from collections.abc import Iterable

from saga.core.workflow import Call, Workflow
from saga.errors import UserError


def call_length(call: Call) -> int:
    """Tokens the call needs in the model's context: its prompt plus its output."""
    return call.prompt.tokens + call.output_tokens


def over_context(workflow: Workflow, limit: int) -> list[Call]:
    """The calls of ``workflow`` longer than ``limit`` tokens (none if ``limit`` <= 0)."""
    if limit <= 0:
        return []
    return [c for c in workflow.calls if call_length(c) > limit]


def describe_over(workflow: Workflow, call: Call, limit: int, model: str) -> str:
    """One line naming the call, its length and the limit (as vLLM's 400 would)."""
    return (
        f"workflow {workflow.id} call {call.id}: {call_length(call):,} tokens "
        f"({call.prompt.tokens:,} prompt + {call.output_tokens:,} output) exceed the "
        f"{limit:,}-token context of {model}"
    )


def check_context(workflows: Iterable[Workflow], limit: int, model: str) -> None:
    """Strict mode: a UserError naming the first call longer than ``limit``."""
    for workflow in workflows:
        over = over_context(workflow, limit)
        if over:
            raise UserError(describe_over(workflow, over[0], limit, model))


def count_over_context(workflows: Iterable[Workflow], limit: int) -> int:
    """Calls longer than ``limit`` over all ``workflows``."""
    return sum(len(over_context(w, limit)) for w in workflows)
