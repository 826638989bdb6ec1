"""Where the shared real traces live: ``$SAGA_TRACES_DIR``, else ``../shared/traces``.

Readers always take an explicit path; these helpers only supply the default one.
"""

from __future__ import annotations

import os
from pathlib import Path

from saga.errors import UserError

ENV_VAR = "SAGA_TRACES_DIR"


def traces_dir() -> Path | None:
    """The shared traces folder, or None when neither the variable nor the folder exists.

    Looks at ``$SAGA_TRACES_DIR`` first, then for ``shared/traces`` beside every parent of
    this file and of the working directory (the repo sits next to ``shared/``).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    starts = [Path(__file__).resolve(), Path.cwd().resolve()]
    for start in starts:
        for parent in start.parents:
            candidate = parent / "shared" / "traces"
            if candidate.is_dir():
                return candidate
    return None


def default_trace(name: str) -> Path:
    """Path of one shared trace file by its relative name; a UserError says how to fix a miss."""
    base = traces_dir()
    if base is None:
        raise UserError(
            f"no traces folder found for {name!r}: give path=FILE, or set {ENV_VAR} "
            "to the folder holding the shared traces"
        )
    return base / name
