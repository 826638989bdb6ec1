"""Types shared by every part of SAGA: workflows, calls, prompts, trace files."""

from saga.core.workflow import DEFAULT_BLOCK_TOKENS, Call, Prompt, Workflow

__all__ = ["DEFAULT_BLOCK_TOKENS", "Call", "Prompt", "Workflow"]
