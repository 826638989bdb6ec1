"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from saga.engine.cluster import CLUSTERS


@pytest.fixture(autouse=True)
def _restore_cluster_registry() -> Iterator[None]:
    """Remove the clusters a test registered (``saga.integrations.replay.kv_cluster``
    adds a preset per KV size and calibration to the process-wide registry), so that no
    test sees another's: ``saga list`` at 80 columns cut its table when one had run."""
    before = set(CLUSTERS)
    yield
    for name in set(CLUSTERS) - before:
        del CLUSTERS[name]
