"""Reader for Mooncake's conversation trace (``mooncake_conversation.jsonl.gz``).

Requests carry global ``hash_ids`` of 512-token blocks and real ``timestamp``s (ms), but no
session ids. Sessions are inferred: a request continues the session whose *last* request's
full-block hash_ids are a prefix of its own (the partial last block's hash changes when the
conversation extends it) (the longest such prefix, of at least ``min_match`` blocks so
that the system prompt every conversation shares does not glue strangers together); otherwise
it starts a new workflow arriving at its timestamp.

Representation (``block_tokens`` 512, the trace's block size):

* blocks used by more than one inferred session (common system prompts) that lead a prompt
  become named shared prefixes ``mooncake:<hash_id>`` of 512 tokens each, so sharing across
  workflows stays exact for leading blocks; a cross-session block after a session-local one
  is kept as a local block (its sharing with other sessions is lost: an approximation);
* session-local blocks are renumbered ``0, 1, 2, ...`` in order of first use, so a follow-up
  request's new blocks continue right after the previous prompt's last run, where the
  simulator caches the previous output (the follow-up contains it);
* only full blocks are listed (``input_length // 512``); the last partial block is unique;
* ``gap`` of a follow-up = its timestamp minus the previous request's timestamp. The trace
  has no completion times, so this includes the previous response time: an upper bound on the
  user's think time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from saga.core.trace import validate_workflow
from saga.core.workflow import Call, Prompt, Workflow
from saga.workloads._blocks import runs_from_ids
from saga.workloads.readers._fields import Fields, json_lines

TRACE_NAME = "mooncake_conversation.jsonl.gz"
BLOCK = 512


@dataclass
class _Req:
    line: int
    t: float
    tokens: int
    out: int
    hashes: tuple[int, ...]

    @property
    def full(self) -> tuple[int, ...]:
        """Hash ids of the full blocks (the last, partial block changes when a turn extends it)."""
        return self.hashes[: self.tokens // BLOCK]


@dataclass
class _Session:
    reqs: list[_Req] = field(default_factory=list)


def _requests(path: str | Path) -> Iterator[_Req]:
    for n, obj in json_lines(path):
        f = Fields(str(path), n)
        hashes = f.array(obj, "hash_ids", "hash_ids")
        for i, h in enumerate(hashes):
            if not isinstance(h, int) or isinstance(h, bool) or h < 0:
                raise f.error(f"hash_ids[{i}]", f"must be an integer >= 0, got {h!r}")
        tokens = f.integer(obj, "input_length", "input_length", 1)
        yield _Req(n, (f.number(obj, "timestamp", "timestamp") or 0.0) / 1000.0, tokens,
                   max(1, f.integer(obj, "output_length", "output_length", 0)), tuple(hashes))


def infer_sessions(reqs: list[_Req], min_match: int) -> list[_Session]:
    """Group requests into sessions by the prefix rule of the module docstring."""
    sessions: list[_Session] = []
    by_last: dict[tuple[int, ...], int] = {}  # full hash_ids of a session's last request
    lengths: set[int] = set()
    for r in reqs:
        best = None
        for k in sorted(lengths, reverse=True):
            if min_match <= k <= len(r.hashes):
                best = by_last.get(r.hashes[:k])
                if best is not None:
                    break
        if best is None:
            best = len(sessions)
            sessions.append(_Session())
        else:
            old = sessions[best].reqs[-1].full
            if by_last.get(old) == best:
                del by_last[old]
        sessions[best].reqs.append(r)
        by_last[r.full] = best
        lengths.add(len(r.full))
    return sessions


def read_mooncake(path: str | Path, *, min_match: int = 2, tenant: str = "mooncake",
                  slo: float | None = None) -> Iterator[Workflow]:
    """Read the trace (all of it: session inference needs every request), yield workflows."""
    reqs = sorted(_requests(path), key=lambda r: (r.t, r.line))
    sessions = infer_sessions(reqs, min_match)
    owners: dict[int, set[int]] = {}
    for i, s in enumerate(sessions):
        for r in s.reqs:
            for h in r.hashes:
                owners.setdefault(h, set()).add(i)
    for i, s in enumerate(sessions):
        w = _workflow(i, s, owners, tenant, slo)
        validate_workflow(w, source=str(path), line=s.reqs[0].line)
        yield w


def _workflow(i: int, s: _Session, owners: dict[int, set[int]], tenant: str,
              slo: float | None) -> Workflow:
    local: dict[int, int] = {}
    calls: list[Call] = []
    for k, r in enumerate(s.reqs):
        full = r.full
        lead = 0
        while lead < len(full) and len(owners[full[lead]]) > 1:
            lead += 1
        shared = tuple((f"mooncake:{h}", BLOCK) for h in full[:lead])
        ids = [local.setdefault(h, len(local)) for h in full[lead:]]
        gap = max(0.0, r.t - s.reqs[k - 1].t) if k else 0.0
        calls.append(Call(f"c{k}", Prompt(r.tokens, shared, runs_from_ids(ids)), r.out,
                          (f"c{k - 1}",) if k else (), gap, "human" if k else None))
    return Workflow(f"mc-{i:05d}", tenant, "chat", s.reqs[0].t, tuple(calls), slo, BLOCK,
                    extra={"source": TRACE_NAME, "lines": [r.line for r in s.reqs]})
