"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from saga.compiled import running_compiled
from saga.engine.cluster import CLUSTERS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that patches the engine model's functions or methods tests nothing against
    compiled code (it calls its own functions natively, and its instances take no new
    attributes): with a compiled build those run in scripts/test.sh's second pass, where
    SAGA_PURE_PYTHON=1 imports the sources (saga.compiled)."""
    if not running_compiled():
        return
    skip = pytest.mark.skip(
        reason="patches the engine model's Python code: runs in scripts/test.sh's "
        "pure-Python pass (SAGA_PURE_PYTHON=1)"
    )
    for item in items:
        if "pure_python" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_cluster_registry() -> Iterator[None]:
    """Remove the clusters a test registered (``saga.integrations.replay.kv_cluster``
    adds a preset per KV size and calibration to the process-wide registry), so that no
    test sees another's: ``saga list`` at 80 columns cut its table when one had run."""
    before = set(CLUSTERS)
    yield
    for name in set(CLUSTERS) - before:
        del CLUSTERS[name]
