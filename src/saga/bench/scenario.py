"""Benchmark scenarios: typed, validated, one TOML file each.

The built-in scenarios live in ``src/saga/scenarios/*.toml``; a user copies one,
edits it, and runs ``saga bench path/to/copy.toml``. Every field is described
here, and a wrong field or value fails with the file and the field named.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from saga.engine.cluster import ClusterSpec, get_cluster
from saga.errors import UserError, validation_reasons


class WorkloadSpec(BaseModel):
    """One workload of a scenario: a registry name and its parameters, or a trace file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        "", description="Workload registry name (see `saga workload list`); empty with `trace`."
    )
    params: dict[str, str | int | float] = Field(
        default_factory=dict, description="Workload parameters, as `--param k=v` would give."
    )
    trace: str | None = Field(
        None,
        description="A canonical trace file (see `saga workload import`), relative to the "
        "scenario file or absolute, instead of a registry name.",
    )
    rate: float | None = Field(
        None,
        gt=0,
        description="With `trace`: re-time the workflows' arrivals as a Poisson process of "
        "this many workflows/s drawn with the case's seed (None: the trace's own arrivals).",
    )
    cluster: str | None = Field(
        None, description="Cluster preset for this workload (default: the scenario's)."
    )
    label: str | None = Field(None, description="Short name in tables (default: name).")

    @model_validator(mode="after")
    def _name_or_trace(self) -> WorkloadSpec:
        if bool(self.name) == (self.trace is not None):
            raise ValueError("give exactly one of name (a registry workload) and trace (a file)")
        if self.trace is not None and self.params:
            raise ValueError("params apply to registry workloads, not to a trace file")
        if self.trace is None and self.rate is not None:
            raise ValueError("rate applies to a trace file; give a registry workload's rate "
                             "in params")
        return self

    @property
    def title(self) -> str:
        return self.label or self.name or Path(self.trace or "trace").name.split(".")[0]

    def string_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.params.items()}


class Scenario(BaseModel):
    """A benchmark: which policies, on which cluster, serving which workloads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Scenario name.")
    description: str = Field("", description="What the scenario shows.")
    kind: Literal["compare", "saturation", "scale", "capacity"] = Field(
        "compare",
        description="compare: every policy on the same workflows; saturation: a closed-loop "
        "sweep of concurrency to each policy's peak throughput; scale: the compare case on "
        "growing clusters, with the simulator's wall time; capacity: each policy's goodput "
        "capacity, the highest Poisson arrival rate it serves within its service level.",
    )
    cluster: str = Field(description="Cluster preset (see `saga list`).")
    policies: list[str] = Field(min_length=1, description="Policies to run, by name.")
    reference: str = Field(
        "saga", description="The policy whose speedup over every other one is reported."
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, description="Seeds (non-negative)."
    )
    workloads: list[WorkloadSpec] = Field(min_length=1, description="Workloads to serve.")
    eviction_bounds: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The offline bounds whose GPU prefix misses each policy's are divided by "
        "(policy -> a bound or a list of bounds, all among `policies`; the first is the "
        "headline's); any other policy is divided by `belady`'s (vllm-affinity's routing "
        "with MIN eviction). A bound must schedule as its policy does: `saga-min-eviction` "
        "is all of SAGA, its retention included, with MIN eviction; `saga-belady` is SAGA's "
        "scheduling with every call's KV released and evicted by MIN.",
    )
    loads: list[float] | None = Field(
        None,
        description="Offered loads as fractions of the peak throughput of `peak_policy` "
        "(found by a closed-loop sweep); each sets the workload's `rate` param. None: use "
        "the workload's own params.",
    )
    peak_policy: str = Field("throughput", description="Policy whose peak defines load 1.0.")
    sweep: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16],
        min_length=1,
        description="saturation/peak search: workflows in flight per replica, in order.",
    )
    sweep_workflows: int = Field(
        4, ge=2, description="Workflows per closed-loop sweep point, as a multiple of concurrency."
    )
    replicas: list[int] = Field(
        default_factory=lambda: [2, 8, 32, 128],
        min_length=1,
        description="scale: cluster sizes in replicas (the workload rate grows with them).",
    )
    end_idle_timeout: float | None = Field(
        None, gt=0, description="Seconds with no call after which a workflow without an end "
        "marker is seen ended (default: the cluster's, the gateway's 600).",
    )
    goodput_slowdown: float = Field(
        2.0, gt=1, description="capacity: a workflow meets its service level when its TCT is "
        "at most this multiple of its TCT alone on an idle replica."
    )
    goodput_target: float = Field(
        0.9, gt=0, le=1, description="capacity: share of workflows that must meet it."
    )
    capacity_tolerance: float = Field(
        0.05, gt=0, le=1, description="capacity: bisection stops when the failing rate is "
        "within this fraction above the passing one."
    )
    capacity_window: float = Field(
        8.0, gt=0, description="capacity: each probe offers the workflows arriving within "
        "this many median TCTs alone (from the workload's pool of `count`)."
    )
    capacity_warmup: float = Field(
        1.0, ge=0, description="capacity: workflows arriving in the first this many median "
        "TCTs alone fill the cluster and are not judged."
    )
    capacity_start: float | None = Field(
        None, gt=0, description="capacity: first rate tried, workflows/s (default: the "
        "workload's own `rate`, else 0.1)."
    )
    kv_sample_interval: float = Field(
        0.0, ge=0, description="Seconds between KV-memory samples for the report (0: auto)."
    )
    quick: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides for `--quick`: any of the fields above, smaller.",
    )

    @field_validator("eviction_bounds", mode="before")
    @classmethod
    def _one_bound_is_a_list_of_one(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _reference_is_run(self) -> Scenario:
        if self.reference not in self.policies:
            raise ValueError(f"reference {self.reference!r} is not among policies")
        for policy, bounds in self.eviction_bounds.items():
            if not bounds:
                raise ValueError(f"eviction_bounds: {policy!r} names no bound")
            for bound in bounds:
                if policy not in self.policies or bound not in self.policies:
                    raise ValueError(
                        f"eviction_bounds: {policy!r} and {bound!r} must both be among policies")
        if self.capacity_warmup >= self.capacity_window:
            raise ValueError("capacity_warmup must be shorter than capacity_window")
        return self

    def cluster_for(self, workload: WorkloadSpec | None = None) -> ClusterSpec:
        """The cluster that serves ``workload`` (its own, else the scenario's), with the
        scenario's end-of-workflow idle timeout if it sets one."""
        name = workload.cluster if workload is not None and workload.cluster else self.cluster
        cluster = get_cluster(name)
        if self.end_idle_timeout is not None:
            cluster = cluster.model_copy(update={"end_idle_timeout": self.end_idle_timeout})
        return cluster

    def quick_version(self) -> Scenario:
        """The scenario with its `quick` overrides applied."""
        data = self.model_dump()
        data.update(self.quick)
        data["quick"] = {}
        return Scenario.model_validate(data)


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with SAGA."""
    folder = resources.files("saga") / "scenarios"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise UserError(f"scenario file not found: {path}")
        text = path.read_text()
        source = str(path)
        base = path.resolve().parent
    else:
        if name_or_path not in builtin_scenarios():
            raise UserError(
                f"unknown scenario {name_or_path!r}; choose one of: "
                f"{', '.join(builtin_scenarios())}, or give a .toml file"
            )
        folder = resources.files("saga") / "scenarios"
        text = (folder / f"{name_or_path}.toml").read_text()
        source = f"{name_or_path}.toml"
        base = Path(str(folder))
    return parse_scenario(text, source, base=base)


def parse_scenario(text: str, source: str, *, base: Path | None = None) -> Scenario:
    """Parse and validate a scenario; trace paths are taken relative to ``base`` (the
    scenario file's folder) unless absolute."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{source}: not valid TOML: {error}") from None
    if base is not None:
        _resolve_traces(data, base)
    try:
        scenario = Scenario.model_validate(data)
        scenario.quick_version()  # the overrides must be valid too
    except ValidationError as error:
        raise UserError(f"{source}: {validation_reasons(error, root='scenario')}") from None
    return scenario


def _resolve_traces(data: dict[str, Any], base: Path) -> None:
    """Make the relative ``trace`` paths of the workloads (and quick workloads) absolute."""
    quick = data.get("quick")
    lists = [data.get("workloads"), quick.get("workloads") if isinstance(quick, dict) else None]
    for workloads in lists:
        for workload in workloads if isinstance(workloads, list) else []:
            trace = workload.get("trace") if isinstance(workload, dict) else None
            if isinstance(trace, str) and not Path(trace).expanduser().is_absolute():
                workload["trace"] = str(base / trace)
