"""A scenario's workload may name a canonical trace file, re-timed as Poisson at a rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saga.bench.runner import run_scenario
from saga.bench.scenario import load_scenario, parse_scenario
from saga.bench.workloads import build_spec
from saga.core.trace import write_trace
from saga.core.workflow import Call, Prompt, Workflow
from saga.errors import UserError

BT = 16


def trace_workflows() -> list[Workflow]:
    # written out of order, with irregular arrivals: the re-timing keeps (arrival, id) order
    arrivals = [5.0, 0.0, 7.5, 1.0, 1.0, 30.0]
    return [
        Workflow(f"w{i}", "t", "a", t, (Call("c0", Prompt(8 * BT, (), ((0, 8),)), 4),),
                 block_tokens=BT)
        for i, t in enumerate(arrivals)
    ]


def scenario_file(tmp_path: Path, workload: str) -> Path:
    (tmp_path / "traces").mkdir()
    write_trace(trace_workflows(), tmp_path / "traces" / "mine.jsonl")
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\ncluster = "test-2"\npolicies = ["vllm-rr", "vllm-affinity"]\n'
        f'reference = "vllm-rr"\nseeds = [3]\n[[workloads]]\n{workload}\n'
    )
    return path


def test_a_trace_retimed_at_a_rate_has_exactly_that_poisson_process(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, 'trace = "traces/mine.jsonl"\nrate = 0.5')
    scenario = load_scenario(str(path))
    workload = scenario.workloads[0]
    assert workload.trace == str(tmp_path / "traces" / "mine.jsonl")  # relative to the file
    workflows, closed = build_spec(workload, 3, {})
    assert closed is None
    # the independent draw: seed 3, exponential gaps of mean 1 / 0.5 s, first arrival at 0
    gaps = np.random.default_rng(3).exponential(2.0, 5)
    expected = [0.0, *np.cumsum(gaps).tolist()]
    assert [w.arrival for w in workflows] == expected
    assert [w.id for w in workflows] == ["w1", "w3", "w4", "w0", "w2", "w5"]
    # the same seed at another rate: the same draws, scaled
    faster, _ = build_spec(workload, 3, {"rate": "2"})
    assert [w.arrival for w in faster] == pytest.approx([t / 4 for t in expected], rel=1e-12)
    assert [w.calls for w in workflows] == [w.calls for w in faster]


def test_a_trace_without_a_rate_keeps_its_arrivals(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, 'trace = "traces/mine.jsonl"')
    workflows, _ = build_spec(load_scenario(str(path)).workloads[0], 0, {"limit": "4"})
    assert [(w.id, w.arrival) for w in workflows] == [
        ("w1", 0.0), ("w3", 1.0), ("w4", 1.0), ("w0", 5.0)
    ]


def test_a_trace_scenario_runs_every_policy_on_the_trace(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, 'trace = "traces/mine.jsonl"\nrate = 0.5')
    result = run_scenario(load_scenario(str(path)), quick=False)
    (case,) = result.cases
    assert case.name == "mine" and case.seed == 3
    assert set(case.runs) == {"vllm-rr", "vllm-affinity"}
    for run in case.runs.values():
        assert set(run.tcts) == {f"w{i}" for i in range(6)}


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ('name = "agents"\ntrace = "x.jsonl"', "exactly one of name"),
        ('trace = "x.jsonl"\nparams = { count = "3" }', "params apply"),
        ('name = "agents"\nrate = 0.5', "rate applies to a trace"),
        ('trace = "x.jsonl"\nrate = 0', "rate"),
    ],
)
def test_bad_trace_workloads_name_the_field(workload: str, message: str) -> None:
    text = (
        'name = "x"\ncluster = "test-2"\npolicies = ["vllm-rr"]\nreference = "vllm-rr"\n'
        f"[[workloads]]\n{workload}\n"
    )
    with pytest.raises(UserError, match=message):
        parse_scenario(text, "x.toml")


def test_a_missing_trace_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(
        'name = "x"\ncluster = "test-2"\npolicies = ["vllm-rr"]\nreference = "vllm-rr"\n'
        '[[workloads]]\ntrace = "nowhere.jsonl"\n'
    )
    with pytest.raises(UserError, match=r"nowhere\.jsonl"):
        build_spec(load_scenario(str(path)).workloads[0], 0, {})
