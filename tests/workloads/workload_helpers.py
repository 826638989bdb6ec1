"""Shared helpers for the workload tests: fixture files and the real traces (skip if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga.workloads.paths import traces_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def real_trace(name: str) -> Path:
    """Path of a shared real trace, or skip the test when it is not there."""
    base = traces_dir()
    if base is None or not (base / name).is_file():
        pytest.skip(f"real trace {name} not available")
    return base / name
