"""Helpers of the end-to-end Ray tests (local Ray, Serve's proxy, real vLLM servers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from saga.integrations.engines import free_port

__all__ = ["free_port", "until"]


def until(condition: Callable[[], Any], what: str, timeout: float = 300.0,
          step: float = 0.05) -> Any:
    """``condition()``'s first true value, polled every ``step`` s; an AssertionError
    naming ``what`` after ``timeout`` s.

    The default is generous: at load 20-30 a call through Serve's proxy took seconds, and
    60 s ran out before calls had reached both router replicas (a condition that holds
    returns at once, so only a failing wait is long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")
