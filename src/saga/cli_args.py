"""Checks of command-line values made before any work starts.

A bad seed or an output path that cannot be written must fail in one line at once, not
as a traceback from deep inside numpy or after a long simulation whose results are then
lost. Nothing here writes anything: the checks only look at the file system.
"""

from __future__ import annotations

import os
from pathlib import Path

from saga.errors import UserError


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed`` if it is a valid random seed (a non-negative integer)."""
    if seed < 0:
        raise UserError(f"{option} {seed}: a seed must be a non-negative integer")
    return seed


def check_output_dir(path: Path, option: str = "--out") -> Path:
    """``path`` if it is, or can be created as, a directory we may write in."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, expected a directory")
    _check_creatable(path, option)
    return path


def check_output_file(path: Path, option: str = "--out", *, parent_must_exist: bool) -> Path:
    """``path`` if a file can be written there.

    ``parent_must_exist``: the command writes into an existing directory only (it does
    not create parents), so a missing one is an error too.
    """
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory, expected a file")
    parent = path.parent
    if parent_must_exist and not parent.is_dir():
        if parent.exists():
            raise UserError(f"{option} {path}: {parent} is a file, not a directory")
        raise UserError(f"{option} {path}: directory {parent} does not exist")
    _check_creatable(parent, option, shown=path)
    return path


def _check_creatable(directory: Path, option: str, shown: Path | None = None) -> None:
    """The nearest existing folder at or above ``directory`` must be a writable folder:
    then ``directory`` exists or ``mkdir(parents=True)`` can make it."""
    shown = shown or directory
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = directory if existing == directory.absolute() else _relative(existing, directory)
        raise UserError(f"{option} {shown}: {where} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {shown}: no permission to write in {existing}")


def _relative(existing: Path, directory: Path) -> Path:
    """``existing`` spelled as the user spelled ``directory`` (relative stays relative)."""
    if directory.is_absolute():
        return existing
    try:
        return existing.relative_to(Path.cwd())
    except ValueError:
        return existing
