"""What a benchmark shows: a terminal table, summary.json, report.html, RESULTS.md."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from saga.bench.capacity import CapacityCase
from saga.bench.runner import BenchResult, CaseResult, pooled_speedups
from saga.bench.scenario import Scenario
from saga.compiled import describe

# (summary key, column title with its unit, format): "pct" a share as a percentage,
# "rate" completed workflows per second or per hour, whichever shows the digits
METRIC_COLUMNS = (
    ("tct_mean", "TCT mean (s)", "{:.1f}"),
    ("tct_p50", "TCT p50 (s)", "{:.1f}"),
    ("tct_p99", "TCT p99 (s)", "{:.1f}"),
    ("slowdown_mean", "slowdown", "{:.2f}x"),
    ("slo_attainment", "SLO met", "pct"),
    ("kv_utilization", "KV util", "pct"),
    ("prefix_hit_rate", "hit rate", "pct"),
    ("throughput_workflows_per_s", "wf/s", "rate"),
)
# how many workflows each row stands on: finished, refused by admission, and paired with
# the reference's for its speedup
COUNT_COLUMNS = ("completed", "rejected", "paired")
JUDGED_ON_SLO = "judged on SLO attainment"
SLO_MET = "SLO met: the share of the workflows that have an SLO which met it"
COLUMNS_EXPLAINED = (
    "TCT: task completion time, a workflow's arrival to its last call's end. slowdown: TCT "
    "over the TCT alone on an idle replica. KV util: time-averaged share of KV memory "
    "holding blocks a running call uses or a later call hits (the plot of KV memory over "
    "time shows all occupied blocks). hit rate: share of prompt tokens found cached (GPU or "
    "host memory). "
    "completed / rejected: workflows finished / refused by admission control; paired: "
    "workflows finished under both this policy and the reference, which the speedups "
    "compare. Speedup: geometric mean of the TCT ratios over paired workflows, bootstrap "
    "95 % CI, paired sign-flip test p; ceiling: the most any policy could show."
)

# The paper's claims (docs/baselines.md section 8), shown next to ours.
PAPER = {
    "tct_vs_vllm_affinity": 1.64,
    "slo_attainment": 0.992,
    "kv_utilization_ratio": 1.22,
    "peak_throughput_ratio": 0.70,
    "eviction_vs_belady": 1.31,
}


def json_safe(value: Any) -> Any:
    """NaN and infinity become null, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def primary_case(result: BenchResult) -> CaseResult | None:
    """The headline case: load closest to 70 % of the first workload, else the first."""
    if not result.cases:
        return None
    first = result.cases[0].workload
    same = [c for c in result.cases if c.workload == first]
    with_load = [c for c in same if c.load is not None]
    if with_load:
        return min(with_load, key=lambda c: (abs((c.load or 0) - 0.7), c.seed))
    return same[0]


def summary_dict(result: BenchResult) -> dict[str, Any]:
    """Everything the benchmark measured, as summary.json holds it."""
    scenario = result.scenario
    primary = primary_case(result)
    peak_ratio: dict[str, float] = {}
    if result.scenario.kind == "saturation" and "throughput" in result.peaks:
        ref = result.peaks["throughput"]
        peak_ratio = {p: v / ref for p, v in result.peaks.items() if ref > 0}
    summary: dict[str, Any] = json_safe(
        {
            "scenario": scenario.name,
            "kind": scenario.kind,
            "quick": result.quick,
            "cluster": scenario.cluster,
            "reference": scenario.reference,
            # summary.json is written with sorted keys: this keeps the scenario's order
            "policy_order": list(scenario.policies),
            "wall_seconds": result.wall_seconds,
            "engine_model": describe(),  # like the wall time: how it ran, not what it decided
            "primary_case": primary.name if primary else None,
            "policies": {n: r.summary for n, r in primary.runs.items()} if primary else {},
            "speedup": pooled_speedups(result),
            "cases": [_case_dict(c) | _load_dict(scenario, c) for c in result.cases],
            "sweep": [vars(p) for p in result.sweep],
            "calls_over_context": calls_over_context(result),
            "peaks": result.peaks,
            "peak_ratio": peak_ratio,
            **capacity_dict(result),
        }
    )
    return summary


def calls_over_context(result: BenchResult) -> dict[str, int]:
    """Per policy, calls longer than the model's context over every case and sweep point
    (never simulated: a valid benchmark has 0 everywhere)."""
    out: dict[str, int] = {p: 0 for p in result.scenario.policies}
    for case in result.cases:
        for name, run in case.runs.items():
            over = run.summary.get("calls_over_context", 0)
            out[name] = out.get(name, 0) + (over if isinstance(over, int) else 0)
    for point in result.sweep:
        out[point.policy] = out.get(point.policy, 0) + point.calls_over_context
    return out


def capacity_dict(result: BenchResult) -> dict[str, Any]:
    """The capacity keys of summary.json: ``capacity`` (workflows/s per policy) and
    ``capacity_ratio`` (``"saga/NAME"``) of the first workload, and ``capacity_cases``
    with every workload's figures and probes."""
    if not result.capacity:
        return {}
    scenario = result.scenario
    cases = [
        {
            "workload": c.workload,
            "source": c.source,
            "params": c.params,
            "cluster": c.cluster,
            "replicas": c.replicas,
            "seeds": c.seeds,
            "workflows_per_seed": c.workflows,
            "capacity": c.capacity,
            "capacity_ratio": c.ratios(scenario.reference),
            "bracketed": c.bracketed,
            "limited": c.limited,
            "window_seconds": c.window,
            "warmup_seconds": c.warmup,
            "points": [vars(p) for p in c.points],
            "wall_seconds": c.wall_seconds,
            "cpu_seconds": c.cpu_seconds,  # per policy, its probes' (varies a little per run)
        }
        for c in result.capacity
    ]
    return {
        "capacity": cases[0]["capacity"],
        "capacity_ratio": cases[0]["capacity_ratio"],
        "capacity_cases": cases,
        "goodput": {
            "slowdown": scenario.goodput_slowdown,
            "target": scenario.goodput_target,
            "tolerance": scenario.capacity_tolerance,
            "window": scenario.capacity_window,
            "warmup": scenario.capacity_warmup,
        },
    }


def _case_dict(case: CaseResult) -> dict[str, Any]:
    return {
        "name": case.name,
        "workload": case.workload,
        "seed": case.seed,
        "replicas": case.replicas,
        "load": case.load,
        "rate": case.rate,
        "policies": {n: r.summary for n, r in case.runs.items()},
        "wall_seconds": {n: r.wall_seconds for n, r in case.runs.items()},
        "speedup": case.speedup,
        "eviction_vs_belady": case.eviction_vs_belady,
        "eviction_bound": case.eviction_bound,
        "eviction_vs_bounds": case.eviction_vs_bounds,
    }


def _load_dict(scenario: Scenario, case: CaseResult) -> dict[str, Any]:
    """The load a case was run at: its arrival rate, as a fraction of the peak policy's
    closed-loop peak when the scenario set loads, and the replicas' busy share per policy.
    (RESULTS.md also states the rate over vllm-affinity's goodput capacity when a
    capacity run of the same workload and cluster is at hand.)"""
    return {
        "cluster": case.cluster,
        "params": case.params,
        "offered_load": {
            "rate": case.rate,
            "of_peak": case.load,
            "peak_policy": scenario.peak_policy if case.load is not None else None,
        },
        "busy_share": {n: r.summary.get("busy_share") for n, r in case.runs.items()},
    }


def case_load_text(scenario: Scenario, case: Mapping[str, Any]) -> str:
    """One line: a case's offered load and each policy's busy share (from its summary)."""
    offered = case.get("offered_load") or {}
    rate, of_peak = offered.get("rate"), offered.get("of_peak")
    if rate is None:
        load = "closed loop" if of_peak is None else "n/a"
    elif of_peak is not None:
        load = (f"{rate:.4g} wf/s, {100 * of_peak:.0f} % of `{scenario.peak_policy}`'s "
                "closed-loop peak")
    else:
        load = f"{rate:.4g} wf/s"
    shares = case.get("busy_share") or {}
    busy = ", ".join(f"{name} {_fmt(share, 'pct')}" for name, share in shares.items())
    return f"offered load: {load}; busy share (replica-time stepping in the arrival window): {busy}"


def write_all(result: BenchResult, directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(result)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (directory / "report.html").write_text(render_html(result, summary))
    return summary


# ---- tables: the same text in the terminal, report.html and RESULTS.md -------------------
@dataclass(frozen=True)
class TextTable:
    """A table as text cells, with one-line notes to print under it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def judged_on_slo(policies: Mapping[str, Mapping[str, Any]], reference: str) -> bool:
    """A case whose workflows carry SLOs is judged on SLO attainment, not on TCT."""
    value = (policies.get(reference) or {}).get("slo_attainment")
    return isinstance(value, int | float) and math.isfinite(value)


def case_table(
    title: str, case: Mapping[str, Any], reference: str, order: Sequence[str] = ()
) -> TextTable:
    """One case, a row per policy: its metrics with their units, then how many workflows
    it completed, rejected and paired with the reference's; SLO attainment comes first
    when the case is judged on it."""
    policies: Mapping[str, Mapping[str, Any]] = case.get("policies") or {}
    rank = {name: i for i, name in enumerate(order)}
    names = sorted(policies, key=lambda n: rank.get(n, len(rank)))
    columns = list(METRIC_COLUMNS)
    notes = []
    if judged_on_slo(policies, reference):
        columns.sort(key=lambda column: column[0] != "slo_attainment")
        title = f"{title}, {JUDGED_ON_SLO}"
        notes.append(f"note: {SLO_MET}")
    else:  # no workflow has an SLO: a column of n/a says nothing
        columns = [c for c in columns if c[0] != "slo_attainment" or any(
            _is_number(m.get(c[0])) for m in policies.values())]
    rate_title, rate_scale, rate_format = _rate_unit(
        [policies[n].get("throughput_workflows_per_s") for n in names]
    )
    header = ["policy", *(rate_title if f == "rate" else t for _, t, f in columns),
              *COUNT_COLUMNS]
    belady = case.get("eviction_vs_belady") or {}
    bounds: Mapping[str, Mapping[str, float]] = case.get("eviction_vs_bounds") or {}
    if belady:
        header += [title for _, title in MISS_COLUMNS]
        header.append("GPU misses / Bélády")
        notes += eviction_notes(case)
    speed = case.get("speedup") or {}
    rows = []
    for name in names:
        metrics = policies[name]
        cells = [name]
        for key, _, fmt in columns:
            value = metrics.get(key)
            if fmt == "rate":
                scaled = value * rate_scale if isinstance(value, int | float) else value
                cells.append(_fmt(scaled, rate_format))
            else:
                cells.append(_fmt(value, fmt))
        paired = (speed.get(f"{reference}/{name}") or {}).get("n")
        cells += [_fmt(metrics.get("workflows_completed"), "{:,}"),
                  _fmt(metrics.get("workflows_rejected"), "{:,}"),
                  "-" if name == reference else _fmt(paired, "{:,}")]
        if belady:
            cells += [_fmt(_millions(metrics.get(key)), "{:.2f}") for key, _ in MISS_COLUMNS]
            if name in bounds:  # each ratio names its bound
                cells.append(", ".join(f"{_fmt(ratio, '{:.2f}x')} {bound}"
                                       for bound, ratio in bound_ratios(case, name)))
            else:  # a summary written before the ratios named their bounds
                cells.append(_fmt(belady.get(name), "{:.2f}x"))
        rows.append(cells)
    return TextTable(title, header, rows, notes)


#: the eviction scenario's token counts (summary keys), shown in millions of tokens
MISS_COLUMNS = (
    ("gpu_missed_tokens", "GPU missed (M tok)"),
    ("recomputed_tokens", "recomputed (M tok)"),
    ("host_loaded_tokens", "host loads (M tok)"),
)
#: what each offline bound keeps of the policy it bounds (docs/baselines.md section 7)
BOUND_MEANING = {
    "belady": "vllm-affinity's routing with MIN eviction",
    "saga-belady": "SAGA's scheduling, every call's KV released and evicted by MIN "
    "(retention and eviction)",
    "saga-min-eviction": "all of SAGA, its pins, offloads and drops included, with MIN "
    "as the GPU eviction order (eviction alone)",
}


def eviction_notes(case: Mapping[str, Any]) -> list[str]:
    """The notes under an eviction table: what its token columns count and what each
    bound its ratios name is."""
    named = (case.get("eviction_vs_bounds") or {}).values()
    used = sorted({bound for ratios in named for bound in ratios})
    meanings = "; ".join(f"{b}: {BOUND_MEANING.get(b, 'an offline bound')}" for b in used)
    notes = ["note: GPU missed: tokens of reusable prefixes not on the GPU when their call "
             "was scheduled, recomputed or loaded from the host tier (host loads; "
             "recomputed also counts what preemptions computed twice)"]
    if meanings:
        notes.append(f"note: GPU misses / Bélády: over each bound named ({meanings})")
    return notes


def bound_ratios(case: Mapping[str, Any], name: str) -> list[tuple[str, float]]:
    """A policy's (bound, GPU misses over the bound's), the headline's bound first and the
    others by name (summary.json sorts its keys: the scenario's order is not kept)."""
    ratios: Mapping[str, float] = (case.get("eviction_vs_bounds") or {}).get(name) or {}
    first = (case.get("eviction_bound") or {}).get(name)
    return sorted(ratios.items(), key=lambda item: (item[0] != first, item[0]))


def _millions(value: Any) -> Any:
    return value / 1e6 if isinstance(value, int | float) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _rate_unit(values: Sequence[Any]) -> tuple[str, float, str]:
    """Completed workflows per second, or per hour where a table's rates are all below
    0.1/s (long agent sessions), so that no column prints 0.000."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if finite and max(finite) < 0.1:
        return "wf/h", 3600.0, "{:.2f}"
    return "wf/s", 1.0, "{:.3f}"


def speedup_table(
    summary: Mapping[str, Any], speed: Mapping[str, Mapping[str, Any]]
) -> TextTable:
    """The reference's TCT speedups over each policy, and a note under each one below 1
    saying what the reference got in return (from the primary case's metrics)."""
    reference = str(summary.get("reference"))
    policies: Mapping[str, Mapping[str, Any]] = summary.get("policies") or {}
    rows, notes = [], []
    if judged_on_slo(policies, reference):
        notes.append(f"note: this scenario is {JUDGED_ON_SLO}, not TCT: the speedups show "
                     "what that costs")
    where = f" (in {summary.get('primary_case')})" if len(summary.get("cases") or []) > 1 else ""
    for key, s in _in_order(summary, speed, lambda key: key.split("/", 1)[1]).items():
        other = key.split("/", 1)[1]
        rows.append([
            other,
            _fmt(s.get("geomean"), "{:.2f}x"),
            f"{_fmt(s.get('ci_low'), '{:.2f}')}-{_fmt(s.get('ci_high'), '{:.2f}')}",
            _fmt(s.get("p"), "{:.2g}"),
            _fmt(s.get("n"), "{:,}"),
            _fmt(s.get("ceiling"), "{:.2f}x"),
        ])
        note = tradeoff_note(reference, other, s, policies.get(reference) or {},
                             policies.get(other) or {})
        if note is not None:
            notes.append(f"note: {note}{where if 'trades' in note else ''}")
    return TextTable(
        f"speedup of {reference} (TCT geometric mean; above 1x: {reference} faster)",
        ["over", "geomean", "95 % CI", "p", "pairs", "ceiling"], rows, notes,
    )


def tradeoff_note(
    reference: str,
    other: str,
    speed: Mapping[str, Any],
    mine: Mapping[str, Any],
    theirs: Mapping[str, Any],
) -> str | None:
    """For a speedup that prints below 1x: what the reference gained in exchange (SLO
    attainment, some tenants' slowdown), or that it gained nothing, or that the loss is
    within noise. None for a speedup of 1x or more."""
    geomean = speed.get("geomean")
    if not isinstance(geomean, float) or not math.isfinite(geomean) or round(geomean, 2) >= 1:
        return None
    head = f"{other} {geomean:.2f}x:"
    ci_high = speed.get("ci_high")
    if isinstance(ci_high, float) and ci_high >= 1:
        return f"{head} within noise (its 95 % CI reaches 1x), no clear difference"
    gains = []
    slo_mine, slo_theirs = mine.get("slo_attainment"), theirs.get("slo_attainment")
    if isinstance(slo_mine, float) and isinstance(slo_theirs, float) and slo_mine > slo_theirs:
        gains.append(f"more SLOs met ({_fmt(slo_mine, 'pct')} vs {_fmt(slo_theirs, 'pct')})")
    tenants_mine, tenants_theirs = _tenants(mine), _tenants(theirs)
    better, worse = [], []
    for tenant in sorted(set(tenants_mine) & set(tenants_theirs)):
        a, b = tenants_mine[tenant], tenants_theirs[tenant]
        cell = f"{tenant} ({a:.1f} vs {b:.1f})"
        if a < 0.98 * b:
            better.append(cell)
        elif a > 1.02 * b:
            worse.append(cell)
    lost = "TCT"
    if better and worse:  # with one tenant its slowdown is the TCT: no trade to show
        gains.insert(0, f"that of {_and(better)}")
        lost = f"the mean slowdown of tenant{'s' if len(worse) > 1 else ''} {_and(worse)}"
    if not gains:
        return f"{head} {reference} is slower here, with no tenant or SLO gain in return"
    return f"{head} {reference} trades {lost} for {', and '.join(gains)}"


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def print_tables(result: BenchResult, summary: Mapping[str, Any], console: Console) -> None:
    """A table per case, the saturation sweep, the speedups and their notes."""
    name, reference = result.scenario.name, result.scenario.reference
    order = list(result.scenario.policies)
    for capacity in result.capacity:
        _print_capacity(result, capacity, console)
    for case in summary.get("cases") or []:
        title = (f"{name}: {case['name']} (seed {case['seed']}, {case['replicas']} "
                 "replicas)")
        _print_table(case_table(title, case, reference, order), console)
        console.print(case_load_text(result.scenario, case))
    if result.sweep:
        table = Table(title=f"{name}: saturation sweep (closed loop)")
        for column in ("policy", "in flight", "wf/s", "TCT mean (s)", "TCT p99 (s)",
                       "KV util"):
            table.add_column(column, justify="left" if column == "policy" else "right")
        for p in result.sweep:
            table.add_row(
                p.policy,
                str(p.concurrency),
                f"{p.throughput:.4f}",
                f"{p.tct_mean:.1f}",
                f"{p.tct_p99:.1f}",
                _fmt(p.kv_utilization, "pct"),
            )
        console.print(table)
    if summary.get("peak_ratio"):
        console.print(
            "peak throughput relative to `throughput`: "
            + ", ".join(f"{k} {v:.3f}" for k, v in summary["peak_ratio"].items())
        )
    speed = summary.get("speedup") or {}
    if speed:
        _print_table(speedup_table(summary, speed), console)


def _print_table(text: TextTable, console: Console) -> None:
    """The table, split into several (each with the first column) where the terminal is
    too narrow for all its columns: a cut or wrapped number misleads."""
    parts: list[list[int]] = []
    for i in range(1, len(text.header)):
        if parts and _width(text, [0, *parts[-1], i], console) <= console.width:
            parts[-1].append(i)
        else:
            parts.append([i])
    for n, part in enumerate(parts or [[]]):
        title = text.title if n == 0 else f"{text.title} (continued)"
        console.print(_rich_table(text, [0, *part], title))
    for note in text.notes:
        console.print(note, highlight=False, markup=False)


def _rich_table(text: TextTable, columns: Sequence[int], title: str | None = None) -> Table:
    table = Table(title=title)
    for i in columns:
        table.add_column(text.header[i], justify="left" if i == 0 else "right", no_wrap=True)
    for row in text.rows:
        table.add_row(*(row[i] for i in columns))
    return table


def _width(text: TextTable, columns: Sequence[int], console: Console) -> int:
    unbounded = console.options.update_width(10_000)  # what it needs, not what fits
    return Measurement.get(console, unbounded, _rich_table(text, columns)).maximum


def _print_capacity(result: BenchResult, case: CapacityCase, console: Console) -> None:
    scenario = result.scenario
    table = Table(
        title=f"{scenario.name}: goodput capacity, {case.workload} on {case.cluster} "
        f"({100 * scenario.goodput_target:g} % of workflows within "
        f"{scenario.goodput_slowdown:g}x their TCT alone; seeds {case.seeds} pooled)"
    )
    for column in ("policy", "capacity (wf/s)", f"{scenario.reference} / policy", "probes"):
        table.add_column(column, justify="right")
    ratios = case.ratios(scenario.reference)
    for name, value in case.capacity.items():
        bound = " (at least: pool ran out)" if case.limited.get(name) else (
            "" if case.bracketed.get(name) else " (not bracketed)"
        )
        table.add_row(
            name,
            f"{value:.4g}{bound}",
            _fmt(ratios.get(f"{scenario.reference}/{name}"), "{:.2f}x"),
            str(sum(1 for p in case.points if p.policy == name)),
        )
    console.print(table)


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if not isinstance(value, int | float):
        return str(value)
    if fmt == "pct":
        return f"{100 * value:.1f} %"
    return fmt.format(value)


# ---- plots and HTML -------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(result: BenchResult) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot the report shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = [_capacity_plot(result, c) for c in result.capacity]
    case = primary_case(result)
    if case is not None and case.runs:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, run in case.runs.items():
            values = sorted(run.tcts.values())
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, where="post", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("task completion time (s)")
        ax.set_ylabel("share of workflows")
        ax.legend(fontsize=7)
        out.append((f"TCT distribution ({case.name})", _png(fig)))

        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(case.runs)
        tenants = sorted({t for r in case.runs.values() for t in _tenants(r.summary)})
        width = 0.8 / max(1, len(tenants))
        for j, tenant in enumerate(tenants):
            ax.bar(
                [i + j * width for i in range(len(names))],
                [_tenants(case.runs[n].summary).get(tenant, 0.0) for n in names],
                width,
                label=tenant,
            )
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(names))],
            names,
            rotation=45,
            ha="right",
            fontsize=7,
        )
        ax.set_ylabel("mean slowdown (TCT / TCT alone)")
        values = [v for r in case.runs.values() for v in _tenants(r.summary).values() if v > 0]
        if values and max(values) > 10 * min(values):
            ax.set_yscale("log")  # one flooded tenant would flatten the others' bars
        ax.legend(fontsize=7)
        out.append((f"slowdown per tenant ({case.name})", _png(fig)))

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, run in case.runs.items():
            if run.kv_timeline:
                times = [t for t, _ in run.kv_timeline]
                used = [100 * u for _, u in run.kv_timeline]
                ax.plot(times, used, label=name, linewidth=1)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("KV memory occupied (%), idle cached blocks included")
        ax.legend(fontsize=7)
        out.append((f"KV memory over time ({case.name})", _png(fig)))

    if case is not None:
        out += _graph_plots(case, result.scenario.reference)
    curve = _throughput_latency(result)
    if curve:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, points in curve.items():
            ordered = sorted(points)
            ax.plot([x for x, _ in ordered], [y for _, y in ordered], marker="o", label=name)
        ax.set_xlabel("completed workflows per second")
        ax.set_ylabel("mean TCT (s)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        out.append(("throughput and latency", _png(fig)))
    return out


def _capacity_plot(result: BenchResult, case: CapacityCase) -> tuple[str, str]:
    """Attainment against arrival rate per policy, each policy's capacity marked."""
    import matplotlib.pyplot as plt

    target = result.scenario.goodput_target
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, capacity in case.capacity.items():
        probes = sorted((p.rate, p.attainment) for p in case.points if p.policy == name)
        (line,) = ax.plot([r for r, _ in probes], [100 * a for _, a in probes], marker="o",
                          markersize=3, linewidth=1, label=f"{name} ({capacity:.3g}/s)")
        if capacity > 0:
            ax.axvline(capacity, color=line.get_color(), linestyle=":", linewidth=1)
        for served, marker in ((False, "v"), (True, "^")):
            # a probe stopped once decided: its share is at most (failed) or at least (served)
            bounds = [(p.rate, 100 * p.attainment) for p in case.points
                      if p.policy == name and p.stopped and p.served == served]
            if bounds:
                ax.plot(*zip(*bounds, strict=True), linestyle="none", marker=marker,
                        color=line.get_color(), markersize=5)
    ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("Poisson arrival rate (workflows/s)")
    ax.set_ylabel(f"workflows within {result.scenario.goodput_slowdown:g}x alone (%)")
    ax.legend(fontsize=7)
    title = (f"goodput attainment against rate, capacity dotted; triangles: probes stopped "
             f"once decided, down at most, up at least ({case.workload}, {case.cluster})")
    return title, _png(fig)


def _graph_plots(case: CaseResult, reference: str) -> list[tuple[str, str]]:
    """Drawings of the execution graphs the reference policy learned: the two most used
    that have a path to show (a one-call agent's graph is a lone dot)."""
    import tempfile

    from saga.report.graph import draw_graph, strongest_paths

    run = case.runs.get(reference)
    if run is None or not run.graph:
        return []
    graphs = [(agent, g) for agent, g in run.graph.items()
              if isinstance(g, dict) and strongest_paths(g).edges]
    graphs.sort(key=lambda item: -sum(n["calls"] for n in item[1].get("nodes", {}).values()))
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for agent, graph in graphs[:2]:
            if isinstance(graph, dict):
                path = draw_graph(agent, graph, Path(folder) / "graph.png")
                data = base64.b64encode(path.read_bytes()).decode()
                out.append((f"execution graph {reference} learned for {agent!r}", data))
    return out


def _tenants(summary: Mapping[str, Any]) -> dict[str, float]:
    value = summary.get("tenant_slowdown") or {}
    return {k: float(v) for k, v in value.items() if isinstance(v, int | float)}


def _throughput_latency(result: BenchResult) -> dict[str, list[tuple[float, float]]]:
    curve: dict[str, list[tuple[float, float]]] = {}
    for p in result.sweep:
        if math.isfinite(p.throughput):
            curve.setdefault(p.policy, []).append((p.throughput, p.tct_mean))
    if curve:
        return curve
    loaded = [c for c in result.cases if c.load is not None]
    for case in loaded:
        for name, run in case.runs.items():
            x = run.summary.get("throughput_workflows_per_s")
            y = run.summary.get("tct_mean")
            if isinstance(x, float) and isinstance(y, float):
                curve.setdefault(name, []).append((x, y))
    return curve if len(loaded) > 1 else {}


def run_description(result: BenchResult) -> list[str]:
    """What this run did, read from its cases (not the scenario's text, which describes
    the full version): cluster and replicas, workloads, loads and rates, seeds, cases."""
    from saga.engine.cluster import get_cluster

    spec = result.scenario
    cluster = get_cluster(spec.cluster)
    replicas = sorted({c.replicas for c in result.cases}) or [cluster.replicas]
    tp = f", TP {cluster.tp}" if cluster.tp > 1 else ""
    lines = [
        f"Cluster {cluster.name}: {_and([str(r) for r in replicas])} "
        f"replica{'s' if replicas != [1] else ''} of {cluster.model} on {cluster.gpu}{tp}."
    ]
    workloads = [
        w.name + (f" ({', '.join(f'{k}={v}' for k, v in w.params.items())})" if w.params else "")
        for w in spec.workloads
    ]
    lines.append(f"Workload{'s' if len(workloads) > 1 else ''}: {'; '.join(workloads)}.")
    loads = sorted({c.load for c in result.cases if c.load is not None})
    if loads:
        lines.append(
            f"Offered load: {_and([f'{round(100 * x)} %' for x in loads])} of the peak "
            f"throughput of the `{spec.peak_policy}` policy (found by a closed-loop sweep)."
        )
    rates = [f"{c.name} {c.rate:.3g}" for c in result.cases if c.rate is not None]
    if rates:
        lines.append(f"Arrival rate (workflows/s): {', '.join(rates)}.")
    if spec.kind == "saturation":
        lines.append(
            f"Closed-loop sweep: {_and([str(x) for x in spec.sweep])} workflows in flight "
            f"per replica, until throughput stops rising ({len(result.sweep)} points)."
        )
    seeds = sorted({c.seed for c in result.cases}) or spec.seeds[:1]
    names = list(dict.fromkeys(c.name for c in result.cases))
    cases = (f"{len(result.cases)} case{'s' if len(result.cases) != 1 else ''} "
             f"({', '.join(names)}), " if names else "")
    seed = f"seed{'s' if len(seeds) != 1 else ''} {_and([str(x) for x in seeds])}"
    lines.append(
        f"{cases}{seed if cases else seed.capitalize()}; "
        f"{len(spec.policies)} policies: {', '.join(spec.policies)}; "
        f"{result.wall_seconds:.0f} s of wall time (engine model: {describe()})."
    )
    return lines


def render_html(result: BenchResult, summary: Mapping[str, Any]) -> str:
    scenario = result.scenario
    mode = " (quick)" if result.quick else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>SAGA bench: {html.escape(scenario.name)}{mode}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "caption{text-align:left;font-weight:bold;padding:.3em 0}"
        ".note{margin:.2em 0;color:#444}.about{color:#555}"
        "img{max-width:100%}.wide{overflow-x:auto}.wide img{max-width:none}"
        "</style></head><body>",
        f"<h1>SAGA bench: {html.escape(scenario.name)}{mode}</h1>",
        "<p>" + "<br>".join(html.escape(line) for line in run_description(result)) + "</p>",
    ]
    if result.quick and scenario.description:
        parts.append(
            f"<p class='about'>The full scenario (without <code>--quick</code>): "
            f"{html.escape(scenario.description)}</p>"
        )
    elif scenario.description:
        parts.append(f"<p class='about'>{html.escape(scenario.description)}</p>")
    for capacity in result.capacity:
        parts.append(_html_capacity(result, capacity))
    order = list(scenario.policies)
    for case in summary.get("cases") or []:
        parts.append(f"<h2>{html.escape(case['name'])}</h2>")
        title = f"seed {case['seed']}, {case['replicas']} replicas"
        parts.append(_html_table(case_table(title, case, scenario.reference, order)))
        parts.append(f"<p>{html.escape(case_load_text(scenario, case))}</p>")
    speed = summary.get("speedup") or {}
    if speed:
        table = speedup_table(summary, speed)
        parts.append(f"<h2>{html.escape(table.title[:1].upper() + table.title[1:])}</h2>")
        parts.append(_html_table(table, caption=False))
    parts.append(f"<p class='about'>{html.escape(COLUMNS_EXPLAINED)}</p>")
    for title, data in plots(result):
        image = f"<img src='data:image/png;base64,{data}'>"
        if title.startswith("execution graph"):  # wide: scroll rather than shrink its text
            image = f"<div class='wide'>{image}</div>"
        parts.append(f"<h2>{html.escape(title)}</h2>{image}")
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_capacity(result: BenchResult, case: CapacityCase) -> str:
    scenario = result.scenario
    ratios = case.ratios(scenario.reference)
    rows = [
        f"<h2>Goodput capacity: {html.escape(case.workload)} on {html.escape(case.cluster)}</h2>",
        f"<p>Highest Poisson arrival rate at which {100 * scenario.goodput_target:g} % of "
        f"workflows finish within {scenario.goodput_slowdown:g}x their TCT alone, pooled over "
        f"seeds {case.seeds} ({case.workflows} workflows each), bisected to "
        f"{100 * scenario.capacity_tolerance:g} %.</p>",
        f"<table><tr><th>policy</th><th>capacity (wf/s)</th>"
        f"<th>{html.escape(scenario.reference)} / policy</th></tr>",
    ]
    for name, value in case.capacity.items():
        ratio = _fmt(ratios.get(f"{scenario.reference}/{name}"), "{:.2f}x")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{value:.4g}</td><td>{ratio}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _html_table(text: TextTable, caption: bool = True) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in text.header)
    title = f"<caption>{html.escape(text.title)}</caption>" if caption else ""
    rows = [f"<table>{title}<tr>{head}</tr>"]
    for row in text.rows:
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    rows.append("</table>")
    rows += [f"<p class='note'>{html.escape(note)}</p>" for note in text.notes]
    return "".join(rows)


# ---- RESULTS.md ---------------------------------------------------------------------------
def results_markdown(summaries: Sequence[Mapping[str, Any]], command: str) -> str:
    """docs/RESULTS.md: the latest figures of every scenario, next to the paper's."""
    lines = [
        "# Results",
        "",
        f"Regenerated by `{command}`. Do not edit by hand.",
        "",
    ]
    basis = capacity_basis(summaries)
    lines += _capacity_section(summaries)
    lines += _headline(summaries)
    lines += _loads_section(summaries, basis)
    for s in summaries:
        if s.get("kind") == "capacity":
            continue  # rendered first, above
        lines += ["", f"## {s['scenario']}{' (quick)' if s.get('quick') else ''}", ""]
        lines += _policy_table(s)
        lines += _load_line(s, basis)
        speed = _in_order(s, s.get("speedup") or {}, lambda key: key.split("/", 1)[1])
        if speed:
            lines += [
                "",
                f"Speedup of `{s['reference']}` (TCT geometric mean over paired "
                "workflows, bootstrap 95 % CI, paired sign-flip test). Ceiling: the "
                "speedup of a scheduler that gave every workflow its TCT alone on an idle "
                "replica, the most any policy could show over that baseline:",
                "",
            ]
            lines += ["| over | geomean | 95 % CI | p | ceiling |", "|---|---|---|---|---|"]
            for key, v in speed.items():
                lines.append(
                    f"| {key.split('/', 1)[1]} | {_fmt(v.get('geomean'), '{:.2f}x')} | "
                    f"{_fmt(v.get('ci_low'), '{:.2f}')}-{_fmt(v.get('ci_high'), '{:.2f}')} | "
                    f"{_fmt(v.get('p'), '{:.2g}')} | {_fmt(v.get('ceiling'), '{:.2f}x')} |"
                )
            notes = speedup_table(s, speed).notes
            if notes:
                lines += ["", *(f"- {note.removeprefix('note: ')}" for note in notes)]
        lines += _sweep_table(s)
        if s.get("peak_ratio"):
            lines += [
                "",
                "Peak throughput relative to `throughput`: "
                + ", ".join(f"{k} {v:.3f}" for k, v in _in_order(s, s["peak_ratio"]).items()),
            ]
    return "\n".join(lines) + "\n"


def _sweep_points(summary: Mapping[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The saturation sweep's points by (policy, workflows in flight)."""
    return {(p["policy"], p["concurrency"]): p for p in summary.get("sweep") or []}


def _sweep_table(summary: Mapping[str, Any]) -> list[str]:
    """The saturation sweep as workflows in flight x policy: completed workflows/s and
    KV memory utilization at each point a policy ran."""
    cell = _sweep_points(summary)
    if summary.get("kind") != "saturation" or not cell:
        return []
    policies = list(_in_order(summary, {name: None for name, _ in cell}))
    lines = [
        "", "Saturation sweep (closed loop): completed workflows/s / KV memory utilization",
        "", f"| in flight | {' | '.join(policies)} |", "|---" * (len(policies) + 1) + "|",
    ]
    for concurrency in sorted({c for _, c in cell}):
        cells = [
            f"{c['throughput']:.4f} / {_fmt(c.get('kv_utilization'), 'pct')}"
            if (c := cell.get((name, concurrency))) else "-"
            for name in policies
        ]
        lines.append(f"| {concurrency} | {' | '.join(cells)} |")
    return lines


def _kv_at_saturation(summary: Mapping[str, Any]) -> tuple[float, int] | None:
    """KV utilization of the reference over vllm-affinity's, and at how many workflows in
    flight: the most both ran in the saturation sweep, where memory binds."""
    ref = str(summary.get("reference"))
    points = _sweep_points(summary)
    common = [c for name, c in points if name == ref and ("vllm-affinity", c) in points]
    if not common:
        return None
    top = max(common)
    ratio = _useful_kv_ratio(points[(ref, top)], points[("vllm-affinity", top)])
    return None if ratio is None else (ratio, top)


def _in_order(
    summary: Mapping[str, Any],
    by_policy: Mapping[str, Any],
    policy_of: Callable[[str], str] = lambda key: key,
) -> dict[str, Any]:
    """``by_policy`` in the scenario's policy order (as run, whether or not the summary
    was read back from a sorted summary.json); unknown policies last, as they came."""
    order = {name: i for i, name in enumerate(summary.get("policy_order") or [])}
    keys = sorted(by_policy, key=lambda k: order.get(policy_of(k), len(order)))
    return {k: by_policy[k] for k in keys}


def _policy_table(s: Mapping[str, Any]) -> list[str]:
    policies = s.get("policies") or {}
    if not policies:
        return []
    # the primary case's speedups give the paired counts; its metrics are `policies`
    primary: Mapping[str, Any] = next(
        (c for c in s.get("cases") or [] if c.get("policies") == policies), {}
    )
    case = {**primary, "policies": policies}
    table = case_table(f"Primary case: {s.get('primary_case')}", case, str(s.get("reference")),
                       list(_in_order(s, policies)))
    return [
        f"{table.title}",
        "",
        f"| {' | '.join(table.header)} |",
        "|---" * len(table.header) + "|",
        *(f"| {' | '.join(row)} |" for row in table.rows),
    ]


def _ceiling(speed: Mapping[str, Any]) -> str:
    value = speed.get("ceiling")
    return f" (ceiling {value:.2f}x)" if isinstance(value, float) and math.isfinite(value) else ""


def _ablation_row(summary: Mapping[str, Any]) -> list[str]:
    """Speedup of the reference over each of its ablations, largest first, in one row."""
    ref = summary.get("reference")
    prefix = f"{ref}/{ref}-no-"
    found = [
        (v["geomean"], k.removeprefix(prefix)) for k, v in (summary.get("speedup") or {}).items()
        if k.startswith(prefix) and isinstance(v.get("geomean"), float)
    ]
    if not found:
        return []
    cells = ", ".join(f"{name} {value:.2f}x" for value, name in sorted(found, reverse=True))
    return [f"| TCT gain of each mechanism (SAGA over SAGA without it), real Claude Code "
            f"sessions | - | {cells} | ablation-claude-code |"]


def _headline(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    by_name = {s["scenario"]: s for s in summaries}
    rows = ["| goal | paper | ours | where |", "|---|---|---|---|"]
    paper = by_name.get("paper", {})
    vs = (paper.get("speedup") or {}).get(f"{paper.get('reference')}/vllm-affinity") or {}
    rows.append(
        f"| TCT vs vllm-affinity (geomean) | {PAPER['tct_vs_vllm_affinity']}x | "
        f"{_fmt(vs.get('geomean'), '{:.2f}x')}{_ceiling(vs)} | paper |"
    )
    for name in ("paper", "claude-code"):
        summary = by_name.get(name, {})
        speed = summary.get("speedup") or {}
        others = [
            (v.get("geomean"), k.split("/", 1)[1]) for k, v in speed.items()
            if _is_other_baseline(k.split("/", 1)[1], str(summary.get("reference")))
            and k.split("/", 1)[1] != "vllm-affinity"  # it has its own row above
            and isinstance(v.get("geomean"), float)
        ]
        if name == "claude-code":
            vs_aff = speed.get(f"{summary.get('reference')}/vllm-affinity") or {}
            rows.append(f"| TCT vs vllm-affinity, real Claude Code sessions | - | "
                        f"{_fmt(vs_aff.get('geomean'), '{:.2f}x')}{_ceiling(vs_aff)} | "
                        "claude-code |")
        if others:
            value, policy = min(others)
            best = speed.get(f"{summary.get('reference')}/{policy}") or {}
            rows.append(f"| TCT vs the best other baseline ({policy}), {name} | goal 1.25x | "
                        f"{value:.2f}x{_ceiling(best)} | {name} |")
    inter = by_name.get("interference", {})
    ref = inter.get("reference")
    slo = ((inter.get("policies") or {}).get(ref) or {}).get("slo_attainment")
    rows.append(
        f"| SLO attainment under interference | 99.2 % | {_fmt(slo, 'pct')} | interference |"
    )
    others_slo = [
        (m.get("slo_attainment"), name) for name, m in (inter.get("policies") or {}).items()
        if not name.startswith("saga") and isinstance(m.get("slo_attainment"), float)
    ]
    if others_slo:
        value, policy = max(others_slo)
        rows.append(f"| SLO attainment, best baseline ({policy}) | - | {_fmt(value, 'pct')} | "
                    "interference |")
    ablated = [
        f"{name.removeprefix(f'{ref}-no-')} {_fmt(m.get('slo_attainment'), 'pct')}"
        for name, m in _in_order(inter, inter.get("policies") or {}).items()
        if name.startswith(f"{ref}-no-")
    ]
    if ablated:
        rows.append(f"| SLO attainment of SAGA without: {', '.join(ablated)} | - | "
                    f"{_fmt(slo, 'pct')} with all | interference |")
    mine_ref = (inter.get("policies") or {}).get(ref) or {}
    rows.append(
        f"| Jain over tenant slowdowns: all tenants / SLO tenants | goal 0.95 | "
        f"{_fmt(mine_ref.get('jain_index'), '{:.3f}')} / "
        f"{_fmt(mine_ref.get('jain_index_slo'), '{:.3f}')} | interference |"
    )
    pol = paper.get("policies") or {}
    ratio = _useful_kv_ratio(pol.get(paper.get("reference")), pol.get("vllm-affinity"))
    sat = by_name.get("saturation", {})
    ours, where = _fmt(ratio, "{:.2f}x"), "paper"
    at_saturation = _kv_at_saturation(sat)
    if at_saturation is not None:
        kv_ratio, in_flight = at_saturation
        ours += f" at 70 % load; {kv_ratio:.2f}x at {in_flight} in flight, closed loop"
        where += ", saturation"
    rows.append(f"| useful KV memory utilization vs vllm-affinity | 1.22x | {ours} | {where} |")
    peak = (sat.get("peak_ratio") or {}).get(sat.get("reference"))
    rows.append(
        f"| peak throughput vs throughput-optimal | ~0.70 | {_fmt(peak, '{:.3f}')} | saturation |"
    )
    rows += _ablation_row(by_name.get("ablation-claude-code", {}))
    rows.append(f"| GPU prefix misses vs Bélády | 1.31x | {_eviction_headline(by_name)} | belady |")
    return ["## Headline", "", *rows]


def _eviction_headline(by_name: Mapping[str, Mapping[str, Any]]) -> str:
    """The reference's GPU prefix misses over each of its bounds, in the belady scenario's
    last case, each ratio with its bound named (only the first for older summaries)."""
    bel = by_name.get("belady", {})
    reference = str(bel.get("reference"))
    cases = bel.get("cases") or []
    if not cases:
        return "n/a"
    case = cases[-1]
    ratios = bound_ratios(case, reference)
    if ratios:
        return ", ".join(f"{_fmt(r, '{:.2f}x')} over {b}" for b, r in ratios)
    ev = (case.get("eviction_vs_belady") or {}).get(reference)
    bound = (case.get("eviction_bound") or {}).get(reference)
    over = f" (over {bound})" if bound not in (None, "belady") else ""
    return f"{_fmt(ev, '{:.2f}x')}{over}"


# ---- RESULTS.md: goodput capacity first, then the loads the TCT figures were taken at ------
def _useful_kv_ratio(mine: Mapping[str, Any] | None, base: Mapping[str, Any] | None
                     ) -> float | None:
    """Useful KV utilization of ``mine`` over ``base`` (the held one for summaries written
    before the useful one existed)."""
    def value(m: Mapping[str, Any] | None) -> Any:
        m = m or {}
        useful = m.get("kv_useful_utilization")
        return useful if isinstance(useful, float) else m.get("kv_utilization")

    a, b = value(mine), value(base)
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None


#: Params that set how many workflows arrive and when, not what they are: a capacity
#: measured on a workload is the basis of another's load when all its other params match.
ARRIVAL_PARAMS = frozenset({"rate", "count", "limit", "duration", "concurrency"})

BasisKey = tuple[str, str, tuple[tuple[str, str], ...]]


def basis_key(source: Any, cluster: Any, params: Any) -> BasisKey:
    """(workload, cluster, its params but the arrival ones) of a case or capacity case."""
    kept = sorted(
        (str(k), str(v)) for k, v in (params or {}).items() if k not in ARRIVAL_PARAMS
    )
    return str(source), str(cluster), tuple(kept)


def capacity_basis(summaries: Sequence[Mapping[str, Any]]) -> dict[BasisKey, float]:
    """vllm-affinity's goodput capacity by workload (arrival params aside) and cluster,
    from any capacity run."""
    out: dict[BasisKey, float] = {}
    for s in summaries:
        for case in s.get("capacity_cases") or []:
            value = (case.get("capacity") or {}).get("vllm-affinity")
            if isinstance(value, int | float) and value > 0:
                key = basis_key(case.get("source"), case.get("cluster"), case.get("params"))
                out[key] = float(value)
    return out


def _is_other_baseline(name: str, reference: str) -> bool:
    """A deployable baseline: neither the reference, nor one of its ablations (`saga-no-*`),
    nor an offline bound (`belady`). Variants of a baseline (`vllm-affinity+gate`,
    `sglang+priority`) are baselines too."""
    return (name != reference and not name.startswith(f"{reference}-")
            and name != "belady")


def _best_other(capacity_ratio: Mapping[str, Any], reference: str) -> tuple[float, str] | None:
    """The smallest ratio over a policy that is neither the reference nor its ablation:
    the best other baseline."""
    found = [
        (float(v), k.split("/", 1)[1]) for k, v in capacity_ratio.items()
        if _is_other_baseline(k.split("/", 1)[1], reference)
        and isinstance(v, int | float)
    ]
    return min(found) if found else None


def _capacity_section(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    found = [s for s in summaries if s.get("capacity_cases")]
    if not found:
        return []
    lines = ["## Goodput capacity", ""]
    for s in found:
        goodput = s.get("goodput") or {}
        ref = str(s.get("reference"))
        lines += [
            f"Scenario `{s['scenario']}`{' (quick)' if s.get('quick') else ''}: the highest "
            f"Poisson arrival rate at which {100 * goodput.get('target', 0.9):g} % of workflows "
            f"finish within {goodput.get('slowdown', 2.0):g}x their TCT alone on an idle "
            f"replica, bisected to {100 * goodput.get('tolerance', 0.05):g} %, the attainment "
            "pooled over the seeds. Each probe offers the workflows arriving within "
            f"{goodput.get('window', 8.0):g} median TCTs alone and judges those arriving after a "
            f"warm-up of {goodput.get('warmup', 1.0):g} median TCT. \"≥\": still served when "
            "the pool of workflows ran "
            "out before the window ended (a lower bound). A probe is finite and drains, so "
            "a backlog that an endless stream would keep growing has not built up within "
            "its window: the figures over-estimate a sustained rate, more for the policies "
            "that fall behind (docs/engine.md, \"Load definition\", measures the bias with "
            "longer windows).",
            "",
            "| goal | ours | where |",
            "|---|---|---|",
        ]
        for case in s["capacity_cases"]:
            ratios = case.get("capacity_ratio") or {}
            where = f"{case['workload']} on {case['cluster']}"
            vs = ratios.get(f"{ref}/vllm-affinity")
            lines.append(f"| capacity {ref} / vllm-affinity (goal 2.0x) | "
                         f"{_fmt(vs, '{:.2f}x')} | {where} |")
            best = _best_other(ratios, ref)
            if best is not None:
                lines.append(f"| capacity {ref} / best other baseline ({best[1]}) "
                             f"(goal 1.3x) | {best[0]:.2f}x | {where} |")
        for case in s["capacity_cases"]:
            capacity = case.get("capacity") or {}
            ratios = case.get("capacity_ratio") or {}
            lines += [
                "",
                f"{case['workload']} on {case['cluster']} ({case.get('workflows_per_seed')} "
                f"workflows x seeds {case.get('seeds')}):",
                "",
                f"| policy | capacity (wf/s) | {ref} / policy |",
                "|---|---|---|",
            ]
            for name, value in _in_order(s, capacity).items():
                at_least = "≥ " if (case.get("limited") or {}).get(name) else ""
                lines.append(f"| {name} | {at_least}{_fmt(value, '{:.4g}')} | "
                             f"{_fmt(ratios.get(f'{ref}/{name}'), '{:.2f}x')} |")
    return [*lines, ""]


def _primary_case_dict(s: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cases = [c for c in s.get("cases") or [] if c.get("name") == s.get("primary_case")]
    return min(cases, key=lambda c: c.get("seed", 0)) if cases else None


def _load_text(s: Mapping[str, Any], case: Mapping[str, Any],
               basis: Mapping[BasisKey, float]) -> str:
    """The offered load of a case, over vllm-affinity's goodput capacity when one was
    measured for the same workload and cluster, else over the peak policy's peak."""
    load = case.get("offered_load") or {}
    rate = load.get("rate")
    capacity = basis.get(basis_key(case.get("workload"), case.get("cluster"), case.get("params")))
    if isinstance(rate, int | float) and capacity:
        return (f"{rate:.4g} wf/s = {rate / capacity:.2f}x vllm-affinity's goodput capacity "
                f"({capacity:.4g} wf/s)")
    if isinstance(load.get("of_peak"), int | float):
        return (f"{_fmt(rate, '{:.4g}')} wf/s = {100 * load['of_peak']:.0f} % of "
                f"`{load.get('peak_policy')}`'s closed-loop peak")
    if isinstance(rate, int | float):
        return f"{rate:.4g} wf/s (no capacity or peak measured for it)"
    return "closed loop"


def _busy_text(s: Mapping[str, Any], case: Mapping[str, Any]) -> str:
    busy = case.get("busy_share") or {}
    ref = str(s.get("reference"))
    shown = [(n, busy.get(n)) for n in (ref, "vllm-affinity") if n in busy]
    return ", ".join(f"{n} {_fmt(v, 'pct')}" for n, v in shown) or "n/a"


def _loads_section(summaries: Sequence[Mapping[str, Any]],
                   basis: Mapping[BasisKey, float]) -> list[str]:
    """The load each scenario's headline (primary) case was run at."""
    rows = []
    for s in summaries:
        case = _primary_case_dict(s)
        if s.get("kind") != "compare" or case is None:
            continue
        rows.append(f"| {s['scenario']} | {case.get('name')} | {_load_text(s, case, basis)} | "
                    f"{_busy_text(s, case)} |")
    if not rows:
        return []
    return [
        "", "## Loads of the TCT figures", "",
        "The offered load of each scenario's primary case (the tables below), and the share of "
        "replica-time spent stepping a batch between the first and the last arrival:", "",
        "| scenario | case | offered load | busy share |", "|---|---|---|---|", *rows,
    ]


def _load_line(s: Mapping[str, Any], basis: Mapping[BasisKey, float]) -> list[str]:
    case = _primary_case_dict(s)
    if case is None or s.get("kind") != "compare":
        return []
    return ["", f"Offered load: {_load_text(s, case, basis)}; busy share "
            f"{_busy_text(s, case)}."]
