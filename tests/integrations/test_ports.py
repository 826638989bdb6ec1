"""Ports for started servers: free now and never in the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saga.integrations import ports
from saga.integrations.ports import (
    DEFAULT_EPHEMERAL,
    LOWEST,
    bindable,
    candidate_bases,
    ephemeral_range,
    free_ports,
)


def test_the_range_is_read_from_the_kernels_file(tmp_path: Path) -> None:
    good = tmp_path / "range"
    good.write_text("40000\t50000\n")
    assert ephemeral_range(good) == (40000, 50000)


@pytest.mark.parametrize("text", ["", "abc def", "1 2 3", "50000 40000", "0 100", "1 70000"])
def test_an_unreadable_or_impossible_range_falls_back_to_linuxs_default(
        tmp_path: Path, text: str) -> None:
    bad = tmp_path / "range"
    bad.write_text(text)
    assert ephemeral_range(bad) == DEFAULT_EPHEMERAL
    assert ephemeral_range(tmp_path / "missing") == DEFAULT_EPHEMERAL


def test_the_bases_stop_where_a_block_would_enter_the_range() -> None:
    below, above = candidate_bases(3, (32768, 60999))
    assert (below.start, below[-1]) == (LOWEST, 32765)
    assert (above.start, above[-1]) == (61000, 65533)


def test_a_range_up_to_the_top_leaves_only_ports_below_it() -> None:
    (only,) = candidate_bases(1, (30000, 65535))
    assert (only.start, only[-1]) == (LOWEST, 29999)
    assert candidate_bases(1, (LOWEST, 65535)) == []


@given(low=st.integers(1, 65535), width=st.integers(0, 65535), count=st.integers(1, 64))
def test_no_block_of_ports_overlaps_the_ephemeral_range(low: int, width: int,
                                                         count: int) -> None:
    high = min(65535, low + width)
    for span in candidate_bases(count, (low, high)):
        for base in (span[0], span[-1]):
            block = range(base, base + count)
            assert block[0] >= LOWEST and block[-1] <= 65535
            assert block[-1] < low or block[0] > high


def test_picked_ports_are_free_and_outside_the_range() -> None:
    low, high = ephemeral_range()
    for _ in range(20):
        base = free_ports(4)
        assert all(not low <= base + i <= high for i in range(4))
        assert all(bindable(base + i) for i in range(4))


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    first = free_ports(1, rng=random.Random(7))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        assert not bindable(first)
        assert free_ports(1, rng=random.Random(7)) != first


def test_no_room_outside_the_range_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (LOWEST, 65535))
    with pytest.raises(RuntimeError, match="outside the ephemeral range"):
        free_ports(1)


def test_every_try_busy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "bindable", lambda port, host="127.0.0.1": False)
    with pytest.raises(RuntimeError, match="in 5 tries"):
        free_ports(2, tries=5)
    with pytest.raises(ValueError, match="at least 1"):
        free_ports(0)
