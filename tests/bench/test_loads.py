"""saga.bench.loads: the ratio of means, the geomean and their ceilings on hand-made TCTs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from saga.bench.loads import load_row, markdown

# two workflows: a long one the schedulers barely touch and a short one they slow down
ALONE = {"long": 1000.0, "short": 10.0}
BASE = {"long": 1010.0, "short": 40.0}
MINE = {"long": 1005.0, "short": 20.0}


def test_a_row_compares_means_and_paired_ratios_against_their_ceilings() -> None:
    row = load_row(2.0, 0.006, "saga", BASE, MINE, ALONE)
    assert row.paired == 2
    assert row.mean_alone == 505.0
    assert row.mean_baseline == 525.0
    assert row.mean_policy == 512.5
    assert row.mean_ratio == pytest.approx(525.0 / 512.5)
    assert row.mean_ceiling == pytest.approx(525.0 / 505.0)
    assert row.geomean == pytest.approx(math.sqrt(1010.0 / 1005.0 * 40.0 / 20.0))
    assert row.geomean_ceiling == pytest.approx(math.sqrt(1010.0 / 1000.0 * 40.0 / 10.0))
    assert row.delay_ratio == pytest.approx(20.0 / 7.5)


def test_only_workflows_finished_under_both_and_known_alone_are_compared() -> None:
    row = load_row(1.0, 0.003, "saga", {**BASE, "lost": 5.0}, MINE, {**ALONE, "x": 1.0})
    assert row.paired == 2
    with pytest.raises(ValueError, match="saga: no workflow"):
        load_row(1.0, 0.003, "saga", {"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 1.0})


def test_a_policy_at_the_ideal_has_an_infinite_delay_ratio() -> None:
    assert load_row(1.0, 0.003, "ideal", BASE, ALONE, ALONE).delay_ratio == math.inf


def test_the_table_has_a_line_per_row_under_a_header_naming_the_baseline() -> None:
    rows = [load_row(2.0, 0.006, "saga", BASE, MINE, ALONE),
            load_row(10 / 3, 0.01, "saga", BASE, MINE, ALONE)]
    lines = markdown(rows, "vllm-affinity").splitlines()
    assert lines[0].startswith("| load (x vllm-affinity's capacity) |")
    assert len(lines) == 4
    assert lines[2].startswith("| 2x | 0.006 | 2 | 505 | 525 | saga | 512 | 1.02x | 1.04x |")
    assert lines[3].startswith("| 3.33x | 0.01 |")


@pytest.mark.parametrize(("argv", "says"), [
    (["--loads", "abc"], "--loads numbers or fractions"),
    (["--loads", "1/0"], "--loads numbers or fractions"),
    (["--sessions", "0", "--loads", "1"], "--sessions must be at least 1"),
    (["--loads", "1", "--policies", "nope"], "unknown policy 'nope'"),
])
def test_the_load_benchmark_refuses_bad_input_before_any_simulation(
    argv: list[str], says: str
) -> None:
    script = Path(__file__).parents[2] / "benchmarks" / "claude_code_load.py"
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("argv", "says"), [
    ([], "the following arguments are required: DIR"),
    (["--points", "--refit", "x"], "not allowed with argument"),
    (["--drift", "--calls", "x"], "not allowed with argument"),
    (["/nonexistent-run"], "/nonexistent-run holds no summary.json"),
])
def test_the_agreement_script_refuses_bad_input_in_one_line(argv: list[str], says: str) -> None:
    script = Path(__file__).parents[2] / "benchmarks" / "sim_real_agreement.py"
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_agreement_script_explains_itself() -> None:
    script = Path(__file__).parents[2] / "benchmarks" / "sim_real_agreement.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0
    assert "--refit" in proc.stdout and "DIR" in proc.stdout


def test_the_agreement_script_reads_the_vllm_runs_only(tmp_path: Path) -> None:
    # a whole `saga bench real` writes llama.cpp's runs into the same runs.jsonl, with the
    # same case, policy, repetition and session names: mixed in, they halved saga's TCT
    import importlib.util

    path = Path(__file__).parents[2] / "benchmarks" / "sim_real_agreement.py"
    spec = importlib.util.spec_from_file_location("sim_real_agreement", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vllm = {"case": "memory", "policy": "saga", "repetition": 0, "tct": {"s000": 20.0}}
    llama = {**vllm, "tct": {"s000": 11.0}, "engine": "llamacpp"}
    (tmp_path / "runs.jsonl").write_text(
        "\n".join(json.dumps(r) for r in (vllm, llama, vllm)) + "\n")
    assert module.vllm_runs(tmp_path) == [vllm, vllm]
