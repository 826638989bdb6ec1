"""Sections of docs/RESULTS.md made by other commands, kept when `saga bench all
--results` regenerates the file.

A kept section sits between ``<!-- kept: NAME -->`` and ``<!-- /kept: NAME -->`` lines;
the command that makes it replaces its own block (:func:`put_section`), and a
regeneration of the whole file carries every kept block of the old file over, in order,
to its end (:func:`keep_sections`).
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^<!-- kept: (?P<name>[\w.-]+) -->\n.*?^<!-- /kept: (?P=name) -->\n",
                    re.DOTALL | re.MULTILINE)


def _wrap(name: str, body: str) -> str:
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"a kept section's name is a word, got {name!r}")
    return f"<!-- kept: {name} -->\n{body.rstrip()}\n<!-- /kept: {name} -->\n"


def kept_sections(text: str) -> dict[str, str]:
    """The kept blocks of ``text`` by name, markers included, in order."""
    return {m["name"]: m[0] for m in _BLOCK.finditer(text)}


def put_section(text: str, name: str, body: str) -> str:
    """``text`` with the kept section ``name`` holding ``body``: in its place if it is
    there, else appended at the end."""
    block = _wrap(name, body)
    old = kept_sections(text).get(name)
    if old is not None:
        return text.replace(old, block, 1)
    return text.rstrip("\n") + "\n\n" + block


def keep_sections(old: str, new: str) -> str:
    """``new`` (a regenerated file) with every kept section of ``old`` it lacks."""
    present = kept_sections(new)
    for name, block in kept_sections(old).items():
        if name not in present:
            new = new.rstrip("\n") + "\n\n" + block
    return new
