"""Errors that a user can cause and fix. The CLI prints them as one line, no traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """Bad input from the user: a wrong option, a missing file, an invalid config.

    The message must say what is wrong and, where possible, how to fix it.
    """


def validation_reasons(error: ValidationError, root: str = "config",
                       limit: int | None = None) -> str:
    """A pydantic validation error as one line: ``field.path: message`` per error (the
    first ``limit``), ``root`` for an error of the whole model, joined by "; "."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or root}: {e['msg']}"
                     for e in error.errors()[:limit])
