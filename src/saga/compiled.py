"""The simulator's engine model, compiled: which modules, and the guard against a stale build.

``scripts/build_compiled.py`` (run by ``scripts/setup.sh``) compiles the modules below with
mypyc into C extensions beside their sources, and writes a manifest with each source's
SHA-256. They are the simulator's hot loop (the engine's steps, its KV cache, the event
loop, the folds and the barrier); the policies stay Python, so users subclass and register
them as before. The compiled code is the same source, so it takes the same decisions:
``tests/test_compiled.py`` compares both builds' summaries byte for byte under every policy.

Python imports an extension before a ``.py`` of the same name, so a build older than its
sources would run yesterday's code. :func:`guard`, called when ``saga`` is imported, checks
the manifest: when any compiled module's source changed since the build, when the manifest
or an extension is missing, or when ``SAGA_PURE_PYTHON=1`` asks for it, every module below
is imported from its ``.py`` (all of them: compiled modules call each other natively, so a
mix would still run old code). A stale build says so once on stderr; rebuild with
``python scripts/build_compiled.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The engine model and the simulator's loop: the modules a simulated step runs through.
# Not the policies (Python classes users subclass) and not the pydantic models (presets,
# cost model parameters), which mypyc does not compile.
COMPILED_MODULES: tuple[str, ...] = (
    "saga.engine.costmodel",
    "saga.engine.driver",
    "saga.engine.events",
    "saga.engine.fold",
    "saga.engine.kvcache",
    "saga.engine.mixed_fold",
    "saga.engine.replica",
    "saga.sim.fold_barrier",
    "saga.sim.simulator",
    "saga.sim.synced",
)
PURE_PYTHON_ENV = "SAGA_PURE_PYTHON"
MANIFEST_NAME = "_compiled.json"

_PACKAGE_DIR = Path(__file__).resolve().parent
_SRC_DIR = _PACKAGE_DIR.parent
MANIFEST = _PACKAGE_DIR / MANIFEST_NAME


def source_path(module: str) -> Path:
    """The ``.py`` file of one of :data:`COMPILED_MODULES`."""
    return _SRC_DIR.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(module: str) -> str:
    """SHA-256 of a module's source, as the build recorded it."""
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def _extension_present(module: str) -> bool:
    base = source_path(module)
    return any(
        base.with_name(base.stem + suffix).exists()
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def stale_modules() -> list[str]:
    """The compiled modules whose build cannot be trusted: source changed since the build,
    not in the manifest, or no extension; every module when the manifest is unreadable or
    the shared library the modules link to (mypyc's group) is gone."""
    try:
        manifest = json.loads(MANIFEST.read_text())
        recorded = manifest["modules"]
        group = _SRC_DIR / manifest["group"]
    except (OSError, ValueError, KeyError, TypeError):
        return list(COMPILED_MODULES)
    if not group.exists():
        return list(COMPILED_MODULES)
    return [
        module for module in COMPILED_MODULES
        if recorded.get(module) != source_digest(module) or not _extension_present(module)
    ]


def state() -> str:
    """``"compiled"`` (a fresh build runs), ``"pure"`` (no build, or ``SAGA_PURE_PYTHON=1``)
    or ``"stale"`` (a build older than its sources: Python runs instead)."""
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        return "pure"
    if not MANIFEST.exists():
        return "stale" if any(_extension_present(m) for m in COMPILED_MODULES) else "pure"
    return "stale" if stale_modules() else "compiled"


def describe() -> str:
    """The engine model this process runs, for the benchmarks' lines: ``"compiled
    (mypyc)"``, ``"Python sources"`` or ``"Python sources (stale build)"``."""
    if running_compiled():
        return "compiled (mypyc)"
    return "Python sources (stale build)" if state() == "stale" else "Python sources"


def running_compiled() -> bool:
    """Whether the engine model imported in this process is the compiled one."""
    module = importlib.import_module("saga.engine.replica")
    return not str(getattr(module, "__file__", "")).endswith(".py")


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' ``.py`` sources ahead of their extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def guard() -> None:
    """Import the compiled modules from source unless a fresh build is present (see the
    module's docstring). Idempotent; cheap (hashes ten files when a build exists)."""
    if any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        return
    if not any(_extension_present(m) for m in COMPILED_MODULES):
        return  # nothing compiled here: Python imports the sources anyway
    now = state()
    if now == "compiled":
        return
    if now == "stale":
        print(
            "saga: the compiled engine model is older than its sources; running the Python "
            "sources (rebuild: python scripts/build_compiled.py)", file=sys.stderr,
        )
    sys.meta_path.insert(0, _SourceFinder())
