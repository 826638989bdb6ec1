"""SAGA: workflow-atomic scheduling for AI-agent inference on GPU clusters.

Public surface: :func:`simulate`, the workflow types (:class:`Workflow`, :class:`Call`,
:class:`Prompt`) and the trace reader and writer (:func:`read_trace`, :func:`write_trace`).
"""

from __future__ import annotations

from typing import Any

from saga.compiled import guard

# Before anything imports the engine model: a compiled build older than its sources must not
# run (saga.compiled).
guard()

__version__ = "0.1.0"

__all__ = ["Call", "Prompt", "Workflow", "__version__", "read_trace", "simulate", "write_trace"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import saga` stays cheap for the CLI and the gateway.
    if name == "simulate":
        from saga.api import simulate

        return simulate
    if name in ("Call", "Prompt", "Workflow"):
        from saga.core import workflow

        return getattr(workflow, name)
    if name in ("read_trace", "write_trace"):
        from saga.core import trace

        return getattr(trace, name)
    raise AttributeError(f"module 'saga' has no attribute {name!r}")
