"""Reader for Azure's 2023 LLM inference traces (``azure_llm_2023_{code,conv}.csv.gz``).

Each request is a single-call workflow of tenant ``background`` (best effort) arriving at
its real timestamp, in seconds after the first request of the file. Requests have no
sessions and no prefixes, so the prompt is one run of its full blocks ``[[0, n]]`` (only ever
reused by itself). Zero generated tokens are counted as 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from saga.core.trace import TraceError, open_text, validate_workflow
from saga.core.workflow import Call, Prompt, Workflow

HEADER = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]


def _parse_time(text: str) -> datetime:
    # The files carry 7 fractional digits, more than fromisoformat takes before 3.11's
    # relaxed parser; cut to microseconds to be safe.
    head, _, frac = text.partition(".")
    stamp = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head)
    return stamp


def read_azure(path: str | Path, *, kind: str = "conv", tenant: str = "background",
               slo: float | None = None, block_tokens: int = 64) -> Iterator[Workflow]:
    """Stream the requests of an Azure 2023 CSV as single-call workflows."""
    source = str(path)
    t0: datetime | None = None
    with open_text(path) as f:
        header = f.readline().strip().split(",")
        if header != HEADER:
            raise TraceError(f"expected header {','.join(HEADER)}", source=source, line=1)
        for n, text in enumerate(f, start=2):
            if not text.strip():
                continue
            t, tokens, out = _row(text, source, n)
            t0 = t if t0 is None else t0
            blocks = tokens // block_tokens
            arrival = max(0.0, (t - t0).total_seconds())
            w = Workflow(
                f"az-{kind}-{n - 1:06d}", tenant, f"azure-{kind}", arrival,
                (Call("c0", Prompt(tokens, (), ((0, blocks),) if blocks else ()), out),),
                slo, block_tokens,
            )
            validate_workflow(w, source=source, line=n)
            yield w


def _row(text: str, source: str, n: int) -> tuple[datetime, int, int]:
    parts = text.strip().split(",")
    if len(parts) != 3:
        raise TraceError(f"expected 3 columns, got {len(parts)}", source=source, line=n)
    try:
        t = _parse_time(parts[0])
    except ValueError:
        raise TraceError(f"bad timestamp {parts[0]!r}", source=source, line=n,
                         field="TIMESTAMP") from None
    values = []
    for name, raw, least in (("ContextTokens", parts[1], 1), ("GeneratedTokens", parts[2], 0)):
        if not raw.isdigit() or int(raw) < least:
            raise TraceError(f"must be an integer >= {least}, got {raw!r}", source=source,
                             line=n, field=name)
        values.append(int(raw))
    return t, values[0], max(1, values[1])
