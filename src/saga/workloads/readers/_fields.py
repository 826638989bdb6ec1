"""Field checks shared by the trace readers: each failure is a TraceError with line and field."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saga.core.trace import TraceError, open_text


def json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSON Lines file (.gz ok)."""
    source = str(path)
    with open_text(path) as f:
        try:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise TraceError(f"invalid JSON: {e.msg} at column {e.colno}",
                                     source=source, line=n) from None
                if not isinstance(obj, dict):
                    raise TraceError("a line must be a JSON object", source=source, line=n)
                yield n, obj
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise TraceError(f"cannot read: {e}", source=source) from None


class Fields:
    """Typed access to one raw record, raising TraceError(source, line, field) on a bad value."""

    def __init__(self, source: str, line: int | None) -> None:
        self.source = source
        self.line = line

    def error(self, field: str, reason: str) -> TraceError:
        return TraceError(reason, source=self.source, line=self.line, field=field)

    def get(self, obj: dict[str, Any], key: str, field: str) -> Any:
        if key not in obj:
            raise self.error(field, "is missing")
        return obj[key]

    def integer(self, obj: dict[str, Any], key: str, field: str, minimum: int = 0) -> int:
        v = self.get(obj, key, field)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(field, f"must be an integer, got {v!r}")
        if v < minimum:
            raise self.error(field, f"must be >= {minimum}, got {v}")
        return v

    def number(self, obj: dict[str, Any], key: str, field: str, *, optional: bool = False
            ) -> float | None:
        v = obj.get(key) if optional else self.get(obj, key, field)
        if v is None and optional:
            return None
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise self.error(field, f"must be a finite number, got {v!r}")
        if v < 0:
            raise self.error(field, f"must be >= 0, got {v}")
        return float(v)

    def text(self, obj: dict[str, Any], key: str, field: str, *, empty_ok: bool = False) -> str:
        v = self.get(obj, key, field)
        if not isinstance(v, str) or (not v and not empty_ok):
            raise self.error(field, f"must be a {'' if empty_ok else 'non-empty '}string, "
                                    f"got {v!r}")
        return v

    def array(self, obj: dict[str, Any], key: str, field: str) -> list[Any]:
        v = self.get(obj, key, field)
        if not isinstance(v, list):
            raise self.error(field, f"must be a list, got {type(v).__name__}")
        return v

    def runs(self, obj: dict[str, Any], key: str, field: str) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for i, r in enumerate(self.array(obj, key, field)):
            ok = (isinstance(r, list) and len(r) == 2
                  and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                  and r[0] >= 0 and r[1] >= 1)
            if not ok:
                raise self.error(f"{field}[{i}]", f"must be [first_id >= 0, count >= 1], got {r!r}")
            out.append((r[0], r[1]))
        return out
