"""The workload registry: every generator, reader and scenario by name (see the package doc)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saga.core.workflow import Workflow
from saga.errors import UserError
from saga.workloads import mixes
from saga.workloads.generators import GENERATORS
from saga.workloads.paths import default_trace
from saga.workloads.readers import (
    ClaudeCodeOptions,
    read_azure,
    read_claude_code,
    read_lmcache,
    read_mooncake,
)
from saga.workloads.readers.lmcache import FILES as LMCACHE_FILES


@dataclass(frozen=True)
class Workload:
    """A named, ready-to-run set of workflows.

    ``workflows`` are sorted by ``(arrival, id)``. If ``closed_loop`` is set, that many
    workflows are kept in flight: arrival times are ignored and each completion starts the
    next workflow in order.
    """

    name: str
    workflows: tuple[Workflow, ...]
    closed_loop: int | None = None
    description: str = ""


class ReaderParams(BaseModel):
    """Parameters every trace reader takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str | None = Field(None, description="Trace file (default: the shared copy under "
                             "$SAGA_TRACES_DIR or ../shared/traces).")
    limit: int | None = Field(None, ge=1, description="Keep only the first N workflows.")
    tenant: str | None = Field(None, min_length=1, description="Tenant (default per reader).")
    slo: float | None = Field(None, ge=1.0, description="TCT SLO as a slowdown factor.")
    concurrency: int | None = Field(None, ge=1, description="Closed loop with N in flight.")


class ClaudeParams(ReaderParams):
    """claude-code reader parameters."""

    rate: float = Field(0.05, gt=0, description="Poisson session arrivals per second.")
    human_gap: Literal["keep", "cap", "zero"] = Field(
        "keep", description="Human think times: keep, cap at human_cap, or zero.")
    human_cap: float = Field(60.0, ge=0, description="Cap in seconds for human_gap=cap.")
    context_window: int | None = Field(
        None, ge=1024, description="Model context window in tokens: Claude Code's "
        "auto-compaction is replayed at it (default: the cluster's model when known; none: "
        "the sessions as recorded, prompts up to 894k tokens).")
    compact_summary: int = Field(4000, ge=1, description="Tokens of a compaction's summary.")
    end_signal: Literal["explicit", "idle"] = Field(
        "idle", description="idle: the session's end is seen only after the idle timeout, "
        "as for a real Claude Code user; explicit: as if the client marked its last call.")


class MooncakeParams(ReaderParams):
    """mooncake reader parameters."""

    min_match: int = Field(2, ge=1, description="Fewest leading blocks a follow-up must "
                           "share with its session's last request.")


class AzureParams(ReaderParams):
    """azure-code / azure-conv reader parameters."""

    block_tokens: int = Field(64, ge=1, description="Tokens per KV block.")


class ScenarioParams(BaseModel):
    """Built-in scenarios take no parameters besides the seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class InterferenceParams(ScenarioParams):
    """interference scenario parameters."""

    rate: float = Field(1.0, gt=0, description="Total workflow arrivals per second.")
    duration: float = Field(300.0, gt=0, description="Seconds of arrivals.")
    batch_share: float = Field(0.8, ge=0, lt=1, description="Share of arrivals from the "
                               "flooding batch tenant.")


Build = Callable[[BaseModel, np.random.Generator], tuple[Iterable[Workflow], int | None]]


@dataclass(frozen=True)
class _Entry:
    params: type[BaseModel]
    build: Build
    description: str


def _reader(trace: str, read: Callable[[str, ReaderParams, int], Iterable[Workflow]]) -> Build:
    def build(p: BaseModel, rng: np.random.Generator) -> tuple[Iterable[Workflow], int | None]:
        assert isinstance(p, ReaderParams)
        seed = int(rng.integers(2**31))
        path = p.path or str(default_trace(trace))
        return islice(read(path, p, seed), p.limit), p.concurrency
    return build


def _tenant(p: ReaderParams, default: str) -> str:
    return p.tenant or default


def _claude(path: str, p: ReaderParams, seed: int) -> Iterable[Workflow]:
    assert isinstance(p, ClaudeParams)
    return read_claude_code(path, ClaudeCodeOptions(
        rate=p.rate, seed=seed, human_gap=p.human_gap, human_cap=p.human_cap,
        tenant=_tenant(p, "claude-code"), slo=p.slo, limit=p.limit,
        context_window=p.context_window, compact_summary=p.compact_summary,
        end_signal=p.end_signal))


def _mooncake(path: str, p: ReaderParams, seed: int) -> Iterable[Workflow]:
    assert isinstance(p, MooncakeParams)
    return read_mooncake(path, min_match=p.min_match, tenant=_tenant(p, "mooncake"), slo=p.slo)


def _azure(kind: str) -> Callable[[str, ReaderParams, int], Iterable[Workflow]]:
    def read(path: str, p: ReaderParams, seed: int) -> Iterable[Workflow]:
        assert isinstance(p, AzureParams)
        return read_azure(path, kind=kind, tenant=_tenant(p, "background"), slo=p.slo,
                          block_tokens=p.block_tokens)
    return read


def _lmcache(name: str) -> Callable[[str, ReaderParams, int], Iterable[Workflow]]:
    def read(path: str, p: ReaderParams, seed: int) -> Iterable[Workflow]:
        return read_lmcache(path, name=name, tenant=_tenant(p, "lmcache"), slo=p.slo)
    return read


def _generator(name: str) -> Build:
    def build(p: BaseModel, rng: np.random.Generator) -> tuple[Iterable[Workflow], int | None]:
        gen = GENERATORS[name]()
        assert isinstance(p, gen.Params)
        return gen.generate(p, rng), p.concurrency
    return build


def _agents(p: BaseModel, rng: np.random.Generator) -> tuple[Iterable[Workflow], int | None]:
    return mixes.agents_mix(rng), None


def _interference(p: BaseModel, rng: np.random.Generator
                  ) -> tuple[Iterable[Workflow], int | None]:
    assert isinstance(p, InterferenceParams)
    return mixes.interference_mix(rng, batch_share=p.batch_share, rate=p.rate,
                                  duration=p.duration), None


def _entries() -> dict[str, _Entry]:
    out = {name: _Entry(g.Params, _generator(name), g.description)
           for name, g in GENERATORS.items()}
    out["agents"] = _Entry(ScenarioParams, _agents, "default: ~40 coding and browser agents "
                           "over ~2 minutes (small, simulates in seconds)")
    out["interference"] = _Entry(InterferenceParams, _interference, "interactive agent "
                                 "tenants (SLO 3.0) vs a tenant flooding batch work")
    out["claude-code"] = _Entry(ClaudeParams, _reader("claude_code_sessions.jsonl.gz",
                                                      _claude), "710 real Claude Code sessions")
    out["mooncake"] = _Entry(MooncakeParams, _reader("mooncake_conversation.jsonl.gz",
                                                     _mooncake),
                             "Mooncake conversation trace, sessions inferred from prefixes")
    for kind in ("code", "conv"):
        out[f"azure-{kind}"] = _Entry(
            AzureParams, _reader(f"azure_llm_2023_{kind}.csv.gz", _azure(kind)),
            f"Azure 2023 {kind} requests: single-call background workflows")
    for name, file in LMCACHE_FILES.items():
        out[f"lmcache-{name}"] = _Entry(ReaderParams, _reader(file, _lmcache(name)),
                                        f"LMCache {name} agent sessions with real text")
    return out


_REGISTRY = _entries()


def list_workloads() -> list[str]:
    """All registry names, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> tuple[str, type[BaseModel]]:
    """A workload's description and params model."""
    return _REGISTRY[_lookup(name)].description, _REGISTRY[name].params


def _lookup(name: str) -> str:
    if name not in _REGISTRY:
        raise UserError(f"unknown workload {name!r}; choose one of: "
                        f"{', '.join(list_workloads())}")
    return name


_NONE = frozenset({"none", "null", ""})


def parse_params(model: type[BaseModel], params: Mapping[str, str] | None, *, name: str
                 ) -> BaseModel:
    """Coerce CLI strings into ``model``; a UserError names the bad param and the valid ones."""
    raw = {k: (None if isinstance(v, str) and v.strip().lower() in _NONE else v)
           for k, v in (params or {}).items()}
    valid = ", ".join(model.model_fields) or "(none)"
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        # every bad param in one message, so a user fixes them in one go
        reasons = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"]) or "params"
            reasons.append(f"unknown param {key!r}" if err["type"] == "extra_forbidden"
                           else f"param {key}: {err['msg']}")
        raise UserError(f"workload {name!r}: {'; '.join(reasons)}; valid: {valid}") from None


def build_workload(name: str, *, seed: int = 0, params: Mapping[str, str] | None = None,
                   context_window: int | None = None) -> Workload:
    """Build workload ``name`` deterministically for ``seed`` with CLI-style string params.

    ``context_window``: the serving model's window, for readers that model how their client
    keeps its prompts within it, and for generators whose client compacts at
    ``max_prompt_tokens`` (it then defaults to the window less the longest output). A param
    given explicitly wins.
    """
    entry = _REGISTRY[_lookup(name)]
    params = dict(params or {})
    fields = entry.params.model_fields
    if context_window and "context_window" in fields:
        params.setdefault("context_window", str(context_window))
    elif context_window and "max_prompt_tokens" in fields and "max_output_tokens" in fields:
        # a generated client compacts before its prompt and its longest answer outgrow
        # the model's window (the generator's own limit when that is lower)
        longest = int(params.get("max_output_tokens", fields["max_output_tokens"].default))
        limit = min(int(fields["max_prompt_tokens"].default), context_window - longest)
        params.setdefault("max_prompt_tokens", str(limit))
    p = parse_params(entry.params, params, name=name)
    workflows, closed = entry.build(p, np.random.default_rng(seed))
    ordered = tuple(sorted(workflows, key=lambda w: (w.arrival, w.id)))
    if not ordered:
        raise UserError(f"workload {name!r} has no workflows with these params")
    ids = {w.id for w in ordered}
    if len(ids) != len(ordered):  # pragma: no cover - guarded by the builders
        raise UserError(f"workload {name!r}: duplicate workflow ids")
    return Workload(name, ordered, closed, entry.description)
