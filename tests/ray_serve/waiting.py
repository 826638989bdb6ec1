"""Helpers of the end-to-end Ray tests (local Ray, Serve's proxy, real vLLM servers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from saga.integrations.engines import free_port

__all__ = ["free_port", "until"]


def until(condition: Callable[[], Any], what: str, timeout: float = 60.0,
          step: float = 0.05) -> Any:
    """``condition()``'s first true value, polled every ``step`` s; an AssertionError
    naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")
