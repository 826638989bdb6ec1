"""Run blocking calls to real engines side by side, one thread each."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def at_once(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, in order, after running them all at once (a thread each). If
    any raised, every thread is still joined first, then the first error is raised here,
    in the caller's thread."""
    results: list[T | None] = [None] * len(tasks)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = tasks[i]()
        except BaseException as exc:  # raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot was filled
