"""Reader for LMCache's agent traces with real text (``lmcache_agent/*.jsonl.gz``).

Calls are grouped by ``session_id`` into workflows and sorted by ``timestamp`` (microseconds,
not always in file order). Each prompt is tokenized with :class:`LineBPE`, trained on the
file's own text, and cut into 64-token blocks; a block's id is given by its *chain* (the
block's tokens and everything before it), so two prompts of a session get the same ids exactly
as far as their token prefixes agree, with any earlier prompt of the session. New blocks get
the next free id, so a chain's new blocks continue right after the previous prompt's last
run, where the simulator caches the previous output. Outputs are counted with the same
tokenizer (at least 1). The first call of a session arrives at its timestamp less the file's
first timestamp; a later call comes after the previous one with ``gap`` = the difference of
their timestamps (responses are not timed in the trace, so this includes the response time).

taubench: its ``input`` holds only the newest message (per the trace's README; in practice a
user-simulator's and an agent's accumulated views interleave within a session). We take each
input as the prompt as given and do not reconstruct the full context, so its prompts are short
and its prefix reuse is only what those inputs share with earlier ones of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saga.core.trace import validate_workflow
from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads._blocks import runs_from_ids
from saga.workloads.readers._fields import Fields, json_lines
from saga.workloads.tokenizer import LineBPE

FILES = {"miniswe": "lmcache_agent/miniswe.jsonl.gz",
         "magagent": "lmcache_agent/magagent.jsonl.gz",
         "taubench": "lmcache_agent/taubench.jsonl.gz"}
BLOCK = 64


@dataclass(frozen=True)
class _Rec:
    line: int
    t: float
    text: str
    output: str
    session: str


def _records(path: str | Path) -> list[_Rec]:
    out = []
    for n, obj in json_lines(path):
        f = Fields(str(path), n)
        out.append(_Rec(n, (f.number(obj, "timestamp", "timestamp") or 0.0) / 1e6,
                        f.text(obj, "input", "input", empty_ok=True),
                        f.text(obj, "output", "output", empty_ok=True),
                        f.text(obj, "session_id", "session_id")))
    return out


def read_lmcache(path: str | Path, *, name: str = "lmcache", tenant: str = "lmcache",
                 slo: float | None = None) -> Iterator[Workflow]:
    """Read one LMCache agent trace; yields one workflow per session, in order of arrival."""
    recs = _records(path)
    tok = LineBPE(t for r in recs for t in (r.text, r.output))
    sessions: dict[str, list[_Rec]] = {}
    for r in sorted(recs, key=lambda r: (r.t, r.line)):
        sessions.setdefault(r.session, []).append(r)
    t0 = min((r.t for r in recs), default=0.0)
    for k, (sid, rs) in enumerate(sessions.items()):
        w = _workflow(f"{name}-{k:03d}", sid, rs, tok, t0, tenant, slo, name)
        validate_workflow(w, source=str(path), line=rs[0].line)
        yield w


def _workflow(wid: str, sid: str, rs: list[_Rec], tok: LineBPE, t0: float, tenant: str,
              slo: float | None, agent: str) -> Workflow:
    ids_by_chain: dict[tuple[int, tuple[int, ...]], int] = {}
    calls = []
    for k, r in enumerate(rs):
        tokens = tok.encode(r.text)
        ids, parent = [], -1
        for b in range(len(tokens) // BLOCK):
            key = (parent, tuple(tokens[b * BLOCK:(b + 1) * BLOCK]))
            parent = ids_by_chain.setdefault(key, len(ids_by_chain))
            ids.append(parent)
        out = max(1, len(tok.encode(r.output)))
        gap = max(0.0, r.t - rs[k - 1].t) if k else 0.0
        calls.append(Call(f"c{k}", Prompt(max(1, len(tokens)), (), runs_from_ids(ids)), out,
                          (f"c{k - 1}",) if k else (), gap, "tool" if k else None))
    return Workflow(wid, tenant, agent, rs[0].t - t0, tuple(calls), slo, BLOCK,
                    extra={"source": f"lmcache_agent/{agent}", "session_id": sid})
