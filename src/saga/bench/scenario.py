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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from saga.errors import UserError


class WorkloadSpec(BaseModel):
    """One workload of a scenario: a registry name and its parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Workload registry name (see `saga workload list`).")
    params: dict[str, str | int | float] = Field(
        default_factory=dict, description="Workload parameters, as `--param k=v` would give."
    )
    label: str | None = Field(None, description="Short name in tables (default: name).")

    @property
    def title(self) -> str:
        return self.label or self.name

    def string_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.params.items()}


class Scenario(BaseModel):
    """A benchmark: which policies, on which cluster, serving which workloads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Scenario name.")
    description: str = Field("", description="What the scenario shows.")
    kind: Literal["compare", "saturation", "scale"] = Field(
        "compare",
        description="compare: every policy on the same workflows; saturation: a closed-loop "
        "sweep of concurrency to each policy's peak throughput; scale: the compare case on "
        "growing clusters, with the simulator's wall time.",
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
    kv_sample_interval: float = Field(
        0.0, ge=0, description="Seconds between KV-memory samples for the report (0: auto)."
    )
    quick: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides for `--quick`: any of the fields above, smaller.",
    )

    @model_validator(mode="after")
    def _reference_is_run(self) -> Scenario:
        if self.reference not in self.policies:
            raise ValueError(f"reference {self.reference!r} is not among policies")
        return self

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
    else:
        if name_or_path not in builtin_scenarios():
            raise UserError(
                f"unknown scenario {name_or_path!r}; choose one of: "
                f"{', '.join(builtin_scenarios())}, or give a .toml file"
            )
        text = (resources.files("saga") / "scenarios" / f"{name_or_path}.toml").read_text()
        source = f"{name_or_path}.toml"
    return parse_scenario(text, source)


def parse_scenario(text: str, source: str) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{source}: not valid TOML: {error}") from None
    try:
        scenario = Scenario.model_validate(data)
        scenario.quick_version()  # the overrides must be valid too
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "scenario"
        raise UserError(f"{source}: {where}: {first['msg']}") from None
    return scenario
