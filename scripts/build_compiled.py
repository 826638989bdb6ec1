"""Compile the simulator's engine model with mypyc (run by scripts/setup.sh).

Builds the modules of ``saga.compiled.COMPILED_MODULES`` into C extensions beside their
sources in src/ (and mypyc's shared library ``src/saga/_compiled_lib__mypyc*.so``), then
writes src/saga/_compiled.json with each source's SHA-256, which ``saga.compiled.guard``
checks at import: an edited source makes Python run every module from source again until
the next build. The same source compiled takes the same decisions, about 1.6x faster
(docs/engine.md, "Thirteenth pass").

Usage: python scripts/build_compiled.py [--force] [--clean]
  (no flag)  build unless the manifest says the build is current
  --force    build even if it is current
  --clean    remove the extensions and the manifest (Python runs the sources)
Needs a C compiler and Python's headers, and mypy (the dev extra). SAGA_PURE_PYTHON=1 at run
time ignores a build without removing it.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
GROUP = "saga._compiled_lib"
sys.path.insert(0, str(SRC))
os.environ["SAGA_PURE_PYTHON"] = "1"  # this process hashes the sources, never runs a build

from saga import compiled  # noqa: E402


def _extensions(module: str) -> list[Path]:
    base = SRC.joinpath(*module.split("."))
    return [
        base.with_name(base.name + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if base.with_name(base.name + suffix).exists()
    ]


def _group_library() -> list[Path]:
    """mypyc's shared library for the compiled modules, inside the package (so that a folder
    holding only the package, as the engines' PYTHONPATH does, carries it)."""
    package, name = GROUP.rsplit(".", 1)
    return sorted(SRC.joinpath(*package.split(".")).glob(f"{name}__mypyc*"))


def clean(modules: tuple[str, ...], manifest: Path) -> int:
    removed = [path for module in modules for path in _extensions(module)]
    removed += _group_library()
    for path in removed:
        path.unlink()
    manifest.unlink(missing_ok=True)
    print(f"build_compiled: removed {len(removed)} extension(s) and the manifest")
    return 0


def build(modules: tuple[str, ...], manifest: Path) -> int:
    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped]

    files = [str(Path(*module.split(".")).with_suffix(".py")) for module in modules]
    started = time.monotonic()
    cwd = Path.cwd()
    os.chdir(SRC)  # mypyc names the modules from the paths, relative to src/
    try:
        with tempfile.TemporaryDirectory(prefix="saga-mypyc-") as scratch:
            extensions = mypycify(
                files, opt_level="3", group_name=GROUP, target_dir=f"{scratch}/c",
            )
            setup(
                name="saga-compiled", ext_modules=extensions,
                script_args=["--quiet", "build_ext", "--inplace", "--build-temp",
                             f"{scratch}/o", "--build-lib", f"{scratch}/lib"],
            )
    finally:
        os.chdir(cwd)
    group = _group_library()
    missing = [module for module in modules if not _extensions(module)]
    if missing or not group:
        print(f"build_compiled: the build left no extension for {missing or 'the group'}",
              file=sys.stderr)
        return 1
    manifest.write_text(json.dumps({
        "group": group[0].relative_to(SRC).as_posix(),
        "python": sys.version.split()[0],
        "modules": {module: compiled.source_digest(module) for module in modules},
    }, indent=1, sort_keys=True) + "\n")
    print(f"build_compiled: {len(modules)} modules compiled in "
          f"{time.monotonic() - started:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--force", action="store_true", help="build even if current")
    parser.add_argument("--clean", action="store_true", help="remove the build")
    args = parser.parse_args()
    modules, manifest = compiled.COMPILED_MODULES, compiled.MANIFEST
    if args.clean:
        return clean(modules, manifest)
    if not args.force and manifest.exists() and not compiled.stale_modules():
        print("build_compiled: the build is current")
        return 0
    return build(modules, manifest)


if __name__ == "__main__":
    sys.exit(main())
