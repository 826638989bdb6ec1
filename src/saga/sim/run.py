"""Run a policy on a workload and cluster: the simulator's front door."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec
from saga.metrics.summary import summarize
from saga.sched.registry import build_policy
from saga.sched.vllm import VLLMRoundRobin
from saga.sim.simulator import SimResult, Simulation


@dataclass(frozen=True)
class RunOutput:
    """A finished run: raw records, the isolated TCTs used for slowdown, the summary."""

    result: SimResult
    isolated: Mapping[str, float]
    summary: dict[str, object]
    graph: dict[str, object] | None = None  # learned execution graphs, if the policy has them


def isolated_tcts(
    cluster: ClusterSpec,
    workflows: Sequence[Workflow],
    cache: MutableMapping[str, float] | None = None,
) -> dict[str, float]:
    """TCT of each workflow alone on an idle replica of ``cluster`` (for slowdown).

    Each workflow is simulated by itself, arriving at time 0, on one replica with
    vLLM's default engine behaviour. Results are memoized in ``cache`` by workflow
    id so that the policies of one benchmark share them.
    """
    single = cluster.model_copy(update={"replicas": 1})
    out: dict[str, float] = {}
    for workflow in workflows:
        if cache is not None and workflow.id in cache:
            out[workflow.id] = cache[workflow.id]
            continue
        alone = Simulation(single, VLLMRoundRobin(), [workflow.with_arrival(0.0)]).run()
        record = alone.workflows[0]
        value = record.finished_at - record.arrival
        out[workflow.id] = value
        if cache is not None:
            cache[workflow.id] = value
    return out


def run_policy(
    cluster: ClusterSpec,
    policy: str,
    workflows: Sequence[Workflow],
    *,
    seed: int = 0,
    closed_loop: int | None = None,
    isolated_cache: MutableMapping[str, float] | None = None,
    progress: Callable[[float], None] | None = None,
    kv_sample_interval: float = 0.0,
    end_idle_timeout: float | None = None,
) -> RunOutput:
    """Simulate ``policy`` and summarize it (see :func:`saga.metrics.summary.summarize`)."""
    chosen = build_policy(policy)
    sim = Simulation(
        cluster,
        chosen,
        workflows,
        seed=seed,
        closed_loop=closed_loop,
        progress=progress,
        kv_sample_interval=kv_sample_interval,
        end_idle_timeout=end_idle_timeout,
    )
    result = sim.run()
    isolated = isolated_tcts(cluster, workflows, isolated_cache)
    snapshot = getattr(chosen, "graph_snapshot", None)
    graph = snapshot() if callable(snapshot) else None
    return RunOutput(result, isolated, summarize(result, isolated), graph)


WORKFLOW_CSV_COLUMNS = (
    "workflow", "tenant", "agent", "arrival", "finished_at", "tct", "isolated_tct",
    "slowdown", "calls", "slo", "rejected",
)


def write_outputs(out: RunOutput, directory: Path, extra: Mapping[str, object]) -> None:
    """Write ``summary.json`` and ``workflows.csv`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = {**extra, **out.summary}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    lines = [",".join(WORKFLOW_CSV_COLUMNS)]
    for w in out.result.workflows:
        done = w.finished_at >= 0
        tct = w.finished_at - w.arrival if done else float("nan")
        alone = out.isolated.get(w.workflow, float("nan"))
        lines.append(
            ",".join(
                [
                    _csv(w.workflow), _csv(w.tenant), _csv(w.agent), f"{w.arrival:.6f}",
                    f"{w.finished_at:.6f}" if done else "", f"{tct:.6f}" if done else "",
                    f"{alone:.6f}", f"{tct / alone:.6f}" if done and alone > 0 else "",
                    str(w.calls), "" if w.slo is None else f"{w.slo:g}", _csv(w.rejected),
                ]
            )
        )
    (directory / "workflows.csv").write_text("\n".join(lines) + "\n")
    if out.graph is not None:
        (directory / "graph.json").write_text(json.dumps(out.graph, indent=1, sort_keys=True))


def _csv(text: str) -> str:
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
