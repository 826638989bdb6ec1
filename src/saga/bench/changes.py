"""What each rule change of issue 14 did to the headline figures, on the same seeds.

The simulator's rules changed four times after the first headline was published; each
change is still a switch or a value, so the old rules can be run again:

1. **vLLM's admission rule**: a waiting call is admitted only if blocks for its whole
   prompt fit (``EngineConfig.scheduler_reserve_full_isl``; off: the first chunk only).
2. **idle ends**: a Claude Code session's end is seen only after the gateway's idle
   timeout (the workload's ``end_signal = "idle"``; before: ``"explicit"``, the exact
   end, which is what every policy was told). The coding agents' client marks its last
   call in both (their ``end_signal`` is ``"explicit"``), so this step moves only the
   Claude Code sessions.
3. **compacted contexts**: the Claude Code reader replays the client's auto-compaction
   at the model's window (``context_window``); before, the prompts were replayed as
   recorded, up to 894k tokens, and simulated although the model holds 131,072.
   The uncapped steps lift the model's ``max_context`` so that those calls run as they
   did then, instead of being rejected as over-long.
4. **calibration**: the A100's attention kernels run at ``attn_mfu`` 0.52 of peak
   (fitted to 50k-128k-token prefills); before, at the GEMMs' ``mfu`` 0.70. The H100
   preset has no ``attn_mfu``, so this step moves only A100 clusters.

Each step adds one change to the previous one (old -> +admission -> +idle ends ->
+compaction -> +calibration), so the last row is the current simulator. Every step runs
the same workflows (the same seeds and arrival rates) with ``saga`` and
``vllm-affinity``; the speedup is the geometric mean over paired workflows of
vllm-affinity's TCT over saga's, pooled over the seeds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from saga.core.context import over_context
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.engine.costmodel import CostModel
from saga.metrics.summary import recomputed_tokens, speedup
from saga.sched.registry import build_policy
from saga.sim.simulator import Simulation
from saga.workloads import build_workload

#: The policies compared at every step: SAGA and the headline's baseline.
POLICIES = ("saga", "vllm-affinity")
#: The longest context of a model "uncapped": larger than any recorded prompt.
UNCAPPED_CONTEXT = 1 << 30


@dataclass(frozen=True)
class Rules:
    """The simulator's rules at one step."""

    full_prompt_admission: bool
    idle_ends: bool
    compaction: bool
    attention_calibration: bool


@dataclass(frozen=True)
class Step:
    """One row of the table: a label, what it changed, and the rules from then on."""

    label: str
    change: str
    rules: Rules


STEPS: tuple[Step, ...] = (
    Step("old rules", "first-chunk admission, exact ends, prompts as recorded, attention "
         "at mfu", Rules(False, False, False, False)),
    Step("+ admission", "vLLM's whole-prompt admission (scheduler_reserve_full_isl)",
         Rules(True, False, False, False)),
    Step("+ idle ends", "Claude Code ends seen after the 600 s idle timeout",
         Rules(True, True, False, False)),
    Step("+ compaction", "Claude Code contexts compacted at the model's window",
         Rules(True, True, True, False)),
    Step("+ calibration", "A100 attention at attn_mfu 0.52 (the current simulator)",
         Rules(True, True, True, True)),
)


@dataclass(frozen=True)
class Case:
    """A headline workload: a registry workload on a cluster, at a stated rate."""

    label: str
    workload: str
    cluster: str
    params: Mapping[str, str]
    seeds: tuple[int, ...]
    note: str = ""


#: The headline cases: the quick versions of the `claude-code` and `paper` scenarios
#: (coding at the rate their 70 % load had under the current rules), and the full ones.
QUICK_CASES: tuple[Case, ...] = (
    Case("claude-code", "claude-code", "a100-8-70b",
         {"rate": "0.01", "limit": "30", "human_gap": "cap", "human_cap": "60"}, (0,),
         "the quick `claude-code` scenario's workload"),
    Case("coding", "coding-agent", "a100-8-70b",
         {"count": "60", "max_calls": "30", "max_prompt_tokens": "80000", "rate": "0.01064"},
         (0,), "the quick `paper` scenario's workload at its 70 % load (0.01064 wf/s)"),
)
FULL_CASES: tuple[Case, ...] = (
    Case("claude-code", "claude-code", "h100-64-70b",
         {"rate": "0.05", "limit": "200", "human_gap": "cap", "human_cap": "60"}, (0, 1, 2),
         "the `claude-code` scenario's workload"),
    Case("coding", "coding-agent", "paper-a100-64",
         {"count": "300", "max_calls": "60", "max_prompt_tokens": "120000", "rate": "0.085"},
         (0, 1), "the `paper` scenario's coding workload at 0.085 wf/s (the quick rate per "
         "replica on 16 replicas)"),
)


class RulesCluster(ClusterSpec):
    """A cluster preset under one step's rules: the admission switch in its engine, and
    the model's window and the attention efficiency in its cost model."""

    uncapped: bool = False
    attention_calibration: bool = True

    def cost_model(self) -> CostModel:
        cost = super().cost_model()
        model = cost.model
        if self.uncapped:
            model = dataclasses.replace(model, max_context=UNCAPPED_CONTEXT)
        efficiency = cost.efficiency
        if not self.attention_calibration and efficiency.attn_mfu is not None:
            efficiency = efficiency.model_copy(update={"attn_mfu": None})  # = mfu
        if model is cost.model and efficiency is cost.efficiency:
            return cost
        return CostModel(model, cost.gpu, cost.tp, efficiency, cost.host_link_bandwidth)


def cluster_under(name: str, rules: Rules) -> RulesCluster:
    """Preset ``name`` under ``rules``."""
    base = get_cluster(name)
    engine = base.engine.model_copy(
        update={"scheduler_reserve_full_isl": rules.full_prompt_admission})
    return RulesCluster(
        **{**base.model_dump(), "engine": engine.model_dump()},
        uncapped=not rules.compaction,
        attention_calibration=rules.attention_calibration,
    )


@dataclass
class Run:
    """One policy on one case's seed under one step's rules."""

    tcts: dict[str, float]  # completed workflows: id -> TCT
    workflows: int
    rejected: int
    over_context: int  # calls longer than the model's window (simulated only if uncapped)
    preemptions: int
    recomputed: int
    cpu_seconds: float


Job = tuple[Rules, Case, str, int]


def run_job(job: Job) -> Run:
    """Simulate one policy on one seed of a case under ``rules`` (in a worker process)."""
    rules, case, policy, seed = job
    started = time.process_time()
    cluster = cluster_under(case.cluster, rules)
    params = dict(case.params)
    if case.workload == "claude-code":
        params["end_signal"] = "idle" if rules.idle_ends else "explicit"
    window = get_cluster(case.cluster).cost_model().model.max_context
    built = build_workload(case.workload, seed=seed, params=params,
                           context_window=window if rules.compaction else None)
    workflows = list(built.workflows)
    result = Simulation(cluster, build_policy(policy), workflows, seed=seed).run()
    done = [w for w in result.workflows if w.finished_at >= 0 and not w.rejected]
    return Run(
        tcts={f"{seed}:{w.workflow}": w.finished_at - w.arrival for w in done},
        workflows=len(workflows),
        rejected=sum(1 for w in result.workflows if w.rejected),
        # against the model's real window: the uncapped rows simulate these calls
        over_context=sum(len(over_context(w, window)) for w in workflows),
        preemptions=sum(c.preemptions for c in result.calls),
        recomputed=recomputed_tokens(result),
        cpu_seconds=time.process_time() - started,
    )


@dataclass
class Cell:
    """One case under one step: each policy's pooled runs and SAGA's speedup."""

    runs: dict[str, Run] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)


def _pool(runs: Sequence[Run]) -> Run:
    out = Run({}, 0, 0, 0, 0, 0, 0.0)
    for r in runs:
        out.tcts.update(r.tcts)
        out.workflows += r.workflows
        out.rejected += r.rejected
        out.over_context += r.over_context
        out.preemptions += r.preemptions
        out.recomputed += r.recomputed
        out.cpu_seconds += r.cpu_seconds
    return out


def measure(cases: Sequence[Case], pool: Executor, say: Callable[[str], None] = print,
            steps: Sequence[Step] = STEPS) -> dict[tuple[str, str], Cell]:
    """Every case under every step's rules: (step label, case label) -> its cell."""
    jobs: list[Job] = [(step.rules, case, policy, seed) for step in steps for case in cases
                       for policy in POLICIES for seed in case.seeds]
    say(f"{len(jobs)} simulations ({len(steps)} steps x {len(cases)} cases x "
        f"{len(POLICIES)} policies x seeds)")
    results = iter(pool.map(run_job, jobs))
    cells: dict[tuple[str, str], Cell] = {}
    for step in steps:
        for case in cases:
            cell = Cell()
            for policy in POLICIES:
                cell.runs[policy] = _pool([next(results) for _ in case.seeds])
            cell.speedup = speedup(cell.runs["vllm-affinity"].tcts, cell.runs["saga"].tcts)
            cells[step.label, case.label] = cell
            say(f"{step.label} / {case.label}: saga {_mean(cell.runs['saga'].tcts):.1f} s, "
                f"vllm-affinity {_mean(cell.runs['vllm-affinity'].tcts):.1f} s, "
                f"{cell.speedup['geomean']:.2f}x")
    return cells


def _mean(tcts: Mapping[str, float]) -> float:
    return sum(tcts.values()) / len(tcts) if tcts else math.nan


def markdown(cells: Mapping[tuple[str, str], Cell], cases: Sequence[Case], command: str,
             steps: Sequence[Step] = STEPS) -> str:
    """The section of docs/RESULTS.md: one row per step, per case SAGA's and
    vllm-affinity's mean TCT and the speedup, then what else moved."""
    head = ["step", "change"]
    for case in cases:
        head += [f"{case.label}: saga TCT (s)", "vllm-affinity TCT (s)", "speedup"]
    lines = [
        "## What each change did",
        "",
        f"Made by `{command}`. The headline cases with the simulator's rules changed one "
        "at a time, cumulatively (each row adds one change to the row above; the last "
        "row is the current simulator), on the same workflows, seeds and rates. TCT: mean "
        "over completed workflows; speedup: geometric mean over paired workflows of "
        "vllm-affinity's TCT over saga's, pooled over the seeds "
        "(`saga.bench.changes`).",
        "",
    ]
    for case in cases:
        seeds = ", ".join(str(s) for s in case.seeds)
        params = ", ".join(f"{k}={v}" for k, v in case.params.items())
        lines.append(f"- {case.label}: `{case.workload}` ({params}) on {case.cluster}, "
                     f"seeds {seeds}: {case.note}.")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        row = [step.label, step.change]
        for case in cases:
            cell = cells[step.label, case.label]
            row += [f"{_mean(cell.runs['saga'].tcts):.1f}",
                    f"{_mean(cell.runs['vllm-affinity'].tcts):.1f}",
                    _times(cell.speedup)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "What else moved (saga / vllm-affinity): workflows completed of those offered, "
        "the workload's calls longer than the model's window (simulated as they were "
        "only in the uncapped rows; 0 once compacted), preemptions, and tokens computed "
        "again (prefix misses and preemption losses). In the uncapped rows a workflow "
        "with a call longer than a replica's whole KV cache is rejected at arrival, as "
        "vLLM refuses such a request, and is not paired:",
        "",
    ]
    head = ["step"] + [f"{case.label}: {what}" for case in cases
                       for what in ("completed", "calls > window", "preemptions",
                                    "recomputed tokens")]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        row = [step.label]
        for case in cases:
            s, v = (cells[step.label, case.label].runs[p] for p in POLICIES)
            row += [f"{len(s.tcts)}/{s.workflows} / {len(v.tcts)}/{v.workflows}",
                    f"{s.over_context}",  # the workload's, the same for both
                    f"{s.preemptions} / {v.preemptions}",
                    f"{s.recomputed:,} / {v.recomputed:,}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _times(value: Mapping[str, Any]) -> str:
    geomean = value.get("geomean", math.nan)
    if not isinstance(geomean, float) or math.isnan(geomean):
        return "n/a"
    return f"{geomean:.2f}x ({value['ci_low']:.2f}-{value['ci_high']:.2f})"
