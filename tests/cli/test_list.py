"""`saga list` in a newcomer's 80-column terminal."""

from __future__ import annotations

import pytest

from saga.cli import main


def test_list_reads_at_80_columns_with_nothing_cut(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from saga.engine.cluster import CLUSTERS

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    words = " ".join(out.split())
    for spec in CLUSTERS.values():
        assert spec.description in words, spec.name  # whole, wrapped at word breaks
    assert len(out.splitlines()) < 50
