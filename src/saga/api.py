"""The public Python API: run a simulation the way ``saga simulate`` does."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from saga.cli_args import check_seed
from saga.core.trace import read_trace
from saga.engine.cluster import get_cluster
from saga.errors import UserError
from saga.sim.run import run_policy, write_outputs
from saga.workloads import build_workload


def simulate(
    workload: str = "agents",
    *,
    trace: str | Path | None = None,
    params: Mapping[str, str] | None = None,
    cluster: str = "small",
    policy: str = "vllm-affinity",
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, object]:
    """Simulate ``policy`` on ``cluster`` serving a built-in workload or a trace file.

    Returns the summary that ``saga simulate`` writes to ``summary.json`` (same keys,
    same values for the same arguments); with ``out`` it writes the same files.
    """
    check_seed(seed, "seed")
    spec = get_cluster(cluster)
    if trace is not None:
        if params:
            raise UserError("params apply to a built-in workload, not to a trace")
        workflows = read_trace(trace)
        closed_loop = None
        source = str(trace)
    else:
        built = build_workload(workload, seed=seed, params=dict(params or {}),
                               context_window=spec.cost_model().model.max_context)
        workflows = list(built.workflows)
        closed_loop = built.closed_loop
        source = workload
    if not workflows:
        raise UserError(f"{source}: no workflows to simulate")
    result = run_policy(spec, policy, workflows, seed=seed, closed_loop=closed_loop)
    meta: dict[str, object] = {
        "policy": policy,
        "cluster": spec.name,
        "workload": source,
        "seed": seed,
        "workflows": len(workflows),
    }
    if out is not None:
        write_outputs(result, Path(out), meta)
    return {**meta, **result.summary}
