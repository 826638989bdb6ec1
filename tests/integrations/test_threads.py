"""saga.integrations.threads.at_once: results in order, every thread joined before an error."""

from __future__ import annotations

import threading

import pytest

from saga.integrations.threads import at_once


def test_results_come_back_in_the_tasks_order() -> None:
    assert at_once([lambda i=i: i * i for i in range(5)]) == [0, 1, 4, 9, 16]
    assert at_once([]) == []


def test_an_error_is_raised_after_every_task_has_finished() -> None:
    finished = []
    release = threading.Event()

    def slow() -> int:
        release.wait(5)
        finished.append("slow")
        return 1

    def fails() -> int:
        release.set()
        raise ValueError("engine down")

    with pytest.raises(ValueError, match="engine down"):
        at_once([slow, fails])
    assert finished == ["slow"]  # joined, not abandoned
