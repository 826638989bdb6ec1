"""The canonical workflow-trace format: JSON Lines, one workflow per line (docs/workloads.md).

Reading validates every line and names the line and the field of the first problem
(:class:`TraceError`); writing is atomic. Files ending in ``.gz`` are gzip-compressed.

Defaults for missing fields: ``tenant`` "default", ``agent`` "agent", ``slo`` null (best
effort), ``block_tokens`` 64, ``end_signal`` "idle" (no end marker: the gateway learns
the end from its idle timeout), a call's ``after`` [] , ``gap`` 0, ``tool`` null, a prompt's
``shared`` and ``blocks`` []. Unknown workflow-level fields are kept in
:attr:`Workflow.extra` and written back under their own names; unknown call-level fields
are ignored.

Rules (each failure has its own reason): see :func:`validate_workflow`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from saga.core.workflow import DEFAULT_BLOCK_TOKENS, END_SIGNALS, Call, Prompt, Workflow
from saga.errors import UserError

__all__ = [
    "TraceError",
    "iter_trace",
    "open_text",
    "parse_workflow",
    "read_trace",
    "validate_workflow",
    "workflow_to_dict",
    "write_trace",
]

# Workflow-level keys of the format; anything else goes to Workflow.extra.
_KNOWN_KEYS = frozenset(
    {"workflow", "tenant", "agent", "arrival", "slo", "block_tokens", "calls", "end_signal"}
)


class TraceError(UserError):
    """A trace line that breaks the format, located by source, line and field.

    ``str()`` is ``"<source>:<line>: <field>: <reason>"``; the line and field parts
    are left out when unknown.
    """

    def __init__(
        self, reason: str, *, source: str = "<input>", line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.reason = reason
        parts = [source if line is None else f"{source}:{line}"]
        if field is not None:
            parts.append(field)
        parts.append(reason)
        super().__init__(": ".join(parts))


class _Bad(Exception):
    """Internal: a field-level problem, turned into a TraceError by the caller."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


# --- scalar checks ---------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    # bool is a subclass of int in Python; the format does not accept true/false as numbers.
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: object, field: str, minimum: int) -> int:
    if not _is_int(v):
        raise _Bad(field, f"must be an integer, got {_show(v)}")
    assert isinstance(v, int)
    if v < minimum:
        raise _Bad(field, f"must be >= {minimum}, got {v}")
    return v


def _float(v: object, field: str, minimum: float) -> float:
    if not (_is_int(v) or isinstance(v, float)):
        raise _Bad(field, f"must be a number, got {_show(v)}")
    assert isinstance(v, int | float)
    f = float(v)
    if not math.isfinite(f):
        raise _Bad(field, f"must be finite, got {f}")
    if f < minimum:
        raise _Bad(field, f"must be >= {minimum:g}, got {f:g}")
    return f


def _str(v: object, field: str) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad(field, f"must be a non-empty string, got {_show(v)}")
    return v


def _list(v: object, field: str) -> list[Any]:
    if not isinstance(v, list):
        raise _Bad(field, f"must be a list, got {_show(v)}")
    return v


def _show(v: object) -> str:
    text = json.dumps(v) if isinstance(v, str | int | float | bool | None) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# --- parsing ---------------------------------------------------------------------------------


def _parse_prompt(obj: object, field: str) -> Prompt:
    if not isinstance(obj, dict):
        raise _Bad(field, f"must be an object, got {_show(obj)}")
    shared: list[tuple[str, int]] = []
    for i, item in enumerate(_list(obj.get("shared", []), f"{field}.shared")):
        f = f"{field}.shared[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise _Bad(f, "must be a [name, tokens] pair")
        shared.append((_str(item[0], f + "[0]"), _int(item[1], f + "[1]", 1)))
    blocks: list[tuple[int, int]] = []
    for i, item in enumerate(_list(obj.get("blocks", []), f"{field}.blocks")):
        f = f"{field}.blocks[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise _Bad(f, "must be a [first_id, count] pair")
        blocks.append((_int(item[0], f + "[0]", 0), _int(item[1], f + "[1]", 1)))
    if "tokens" not in obj:
        raise _Bad(f"{field}.tokens", "is missing")
    tokens = _int(obj["tokens"], f"{field}.tokens", 1)
    return Prompt(tokens=tokens, shared=tuple(shared), blocks=tuple(blocks))


def _parse_call(obj: object, field: str) -> Call:
    if not isinstance(obj, dict):
        raise _Bad(field, f"must be an object, got {_show(obj)}")
    if "id" not in obj:
        raise _Bad(f"{field}.id", "is missing")
    cid = _str(obj["id"], f"{field}.id")
    after = tuple(
        _str(a, f"{field}.after[{i}]")
        for i, a in enumerate(_list(obj.get("after", []), f"{field}.after"))
    )
    gap = _float(obj.get("gap", 0.0), f"{field}.gap", 0.0)
    tool = obj.get("tool")
    if tool is not None and not isinstance(tool, str):
        raise _Bad(f"{field}.tool", f"must be a string or null, got {_show(tool)}")
    if "prompt" not in obj:
        raise _Bad(f"{field}.prompt", "is missing")
    prompt = _parse_prompt(obj["prompt"], f"{field}.prompt")
    if "output_tokens" not in obj:
        raise _Bad(f"{field}.output_tokens", "is missing")
    out = _int(obj["output_tokens"], f"{field}.output_tokens", 1)
    return Call(id=cid, prompt=prompt, output_tokens=out, after=after, gap=gap, tool=tool)


def _parse(obj: object) -> Workflow:
    if not isinstance(obj, dict):
        raise _Bad("workflow", f"a line must be a JSON object, got {_show(obj)}")
    if "workflow" not in obj:
        raise _Bad("workflow", "is missing")
    wid = _str(obj["workflow"], "workflow")
    tenant = _str(obj.get("tenant", "default"), "tenant")
    agent = _str(obj.get("agent", "agent"), "agent")
    if "arrival" not in obj:
        raise _Bad("arrival", "is missing")
    arrival = _float(obj["arrival"], "arrival", 0.0)
    slo_raw = obj.get("slo")
    slo = None if slo_raw is None else _float(slo_raw, "slo", 1.0)
    block_tokens = _int(obj.get("block_tokens", DEFAULT_BLOCK_TOKENS), "block_tokens", 1)
    end_signal = obj.get("end_signal", "idle")
    if end_signal not in END_SIGNALS:
        raise _Bad("end_signal", f"must be one of {', '.join(END_SIGNALS)}, got "
                   f"{_show(end_signal)}")
    if "calls" not in obj:
        raise _Bad("calls", "is missing")
    raw_calls = _list(obj["calls"], "calls")
    calls = tuple(_parse_call(c, f"calls[{i}]") for i, c in enumerate(raw_calls))
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    w = Workflow(
        id=wid, tenant=tenant, agent=agent, arrival=arrival, calls=calls, slo=slo,
        block_tokens=block_tokens, extra=extra, end_signal=end_signal,
    )
    _check(w)
    return w


def _check(w: Workflow) -> None:
    """The cross-field rules (raise _Bad on the first broken one)."""
    if not w.calls:
        raise _Bad("calls", "must hold at least one call")
    seen: set[str] = set()
    for i, c in enumerate(w.calls):
        f = f"calls[{i}]"
        if c.id in seen:
            raise _Bad(f"{f}.id", f"duplicate call id {c.id!r}")
        for j, a in enumerate(c.after):
            if a not in seen:
                why = "names a later call or itself" if _has_id(w, a) else "unknown call id"
                raise _Bad(f"{f}.after[{j}]", f"{why} {a!r}")
        seen.add(c.id)
        p = c.prompt
        needed = p.shared_tokens() + p.block_count() * w.block_tokens
        if p.tokens < needed:
            raise _Bad(
                f"{f}.prompt.tokens",
                f"{p.tokens} is less than the shared prefixes ({p.shared_tokens()}) plus "
                f"{p.block_count()} blocks of {w.block_tokens} tokens ({needed})",
            )


def _has_id(w: Workflow, cid: str) -> bool:
    return any(c.id == cid for c in w.calls)


def parse_workflow(obj: object, *, source: str = "<input>", line: int | None = None) -> Workflow:
    """Build a validated :class:`Workflow` from one decoded JSON object.

    Raises :class:`TraceError` naming ``source``, ``line`` and the dotted field path.
    """
    try:
        return _parse(obj)
    except _Bad as e:
        raise TraceError(e.reason, source=source, line=line, field=e.field) from None


def validate_workflow(w: Workflow, *, source: str = "<input>", line: int | None = None) -> None:
    """Check a workflow built in code (by a reader or generator) against the format's rules.

    Rules: non-empty id, tenant and agent; arrival finite and >= 0; slo None or >= 1;
    block_tokens >= 1; at least one call; call ids unique; ``after`` names only earlier
    calls; gap finite and >= 0; prompt tokens and output tokens >= 1; block runs
    ``first >= 0, count >= 1``; shared prefixes ``tokens >= 1``; and
    ``prompt.tokens >= shared tokens + block count * block_tokens``.
    """
    try:
        _parse(workflow_to_dict(w))
    except _Bad as e:
        raise TraceError(e.reason, source=source, line=line, field=e.field) from None


# --- serialisation ---------------------------------------------------------------------------


def _call_to_dict(c: Call) -> dict[str, object]:
    return {
        "id": c.id,
        "after": list(c.after),
        "gap": c.gap,
        "tool": c.tool,
        "prompt": {
            "shared": [[n, t] for n, t in c.prompt.shared],
            "blocks": [[f, n] for f, n in c.prompt.blocks],
            "tokens": c.prompt.tokens,
        },
        "output_tokens": c.output_tokens,
    }


def workflow_to_dict(w: Workflow) -> dict[str, object]:
    """The canonical JSON form of a workflow; ``extra`` fields follow under their own names."""
    d: dict[str, object] = {
        "workflow": w.id,
        "tenant": w.tenant,
        "agent": w.agent,
        "arrival": w.arrival,
        "slo": w.slo,
        "block_tokens": w.block_tokens,
        "end_signal": w.end_signal,
        "calls": [_call_to_dict(c) for c in w.calls],
    }
    for k, v in w.extra.items():
        if k not in _KNOWN_KEYS:
            d[k] = v
    return d


# --- files -----------------------------------------------------------------------------------


def open_text(path: str | Path, mode: str = "rt") -> IO[str]:
    """Open a text file, gzip-compressed when its name ends in ``.gz``.

    A missing or unreadable file is a :class:`UserError` with the path in the message.
    """
    p = Path(path)
    try:
        if p.suffix == ".gz":
            return gzip.open(p, mode, encoding="utf-8")  # type: ignore[return-value]
        return open(p, mode, encoding="utf-8")  # the caller closes it
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a trace file") from None
    except PermissionError:
        raise UserError(f"{p}: permission denied") from None


def iter_trace(path: str | Path) -> Iterator[Workflow]:
    """Stream the workflows of a trace file, validating each line as it is read.

    Blank lines are skipped. Workflow ids must be unique within the file.
    """
    source = str(path)
    seen: set[str] = set()
    with open_text(path) as f:
        for n, text in enumerate(_lines(f, source), start=1):
            if not text.strip():
                continue
            try:
                # without its line break: an error at the end of the line would
                # otherwise be reported at column 1 of the next line
                obj = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise TraceError(f"invalid JSON: {e.msg} at column {e.colno}",
                                 source=source, line=n) from None
            w = parse_workflow(obj, source=source, line=n)
            if w.id in seen:
                raise TraceError(f"duplicate workflow id {w.id!r}", source=source, line=n,
                                 field="workflow")
            seen.add(w.id)
            yield w


def _lines(f: IO[str], source: str) -> Iterator[str]:
    try:
        yield from f
    except (OSError, EOFError, UnicodeDecodeError) as e:
        # A corrupt gzip stream or a binary file: say so instead of a traceback.
        raise TraceError(f"cannot read: {e}", source=source) from None


def read_trace(path: str | Path) -> list[Workflow]:
    """Read a whole trace file; on any bad line raise :class:`TraceError` and return nothing."""
    return list(iter_trace(path))


def write_trace(workflows: Iterable[Workflow], path: str | Path) -> int:
    """Write workflows as a trace file atomically; returns how many were written.

    The data goes to a temporary file in the same directory, renamed over ``path`` only
    when complete, so an error (in the iterable, or a full disk) leaves no partial file.
    """
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    if not directory.is_dir():
        raise UserError(f"{p}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            # mtime=0: the same workflows give byte-identical files.
            stream = cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
                          ) if p.suffix == ".gz" else raw
            with stream:
                for w in workflows:
                    line = json.dumps(workflow_to_dict(w), separators=(",", ":"))
                    stream.write(line.encode("utf-8") + b"\n")
                    count += 1
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
