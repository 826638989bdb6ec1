"""A tiny slice of benchmarks/real_engines.py: LMCache sessions through the gateway in front
of real vLLM and llama.cpp replicas under saga, vllm-affinity and vllm-rr, with the engines'
prefix hit rates and the simulator's prediction printed (skips without engines or traces)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engines, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("real_engines", ROOT / "benchmarks" /
                                                  "real_engines.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_slice(vllm_pair: list[str], llama_pair: list[str],
                      capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    traces = bench.TRACES  # type: ignore[attr-defined]
    if not (traces / "miniswe.jsonl.gz").exists():
        pytest.skip(f"LMCache traces not found in {traces}")
    code = bench.main([  # type: ignore[attr-defined]
        "--vllm-urls", ",".join(vllm_pair), "--llama-urls", ",".join(llama_pair),
        "--slots", "2", "--sessions", "3", "--calls", "3", "--max-tokens", "8",
        "--max-prompt-chars", "3000", "--time-compress", "200", "--max-gap", "0.5",
        "--arrival-interval", "0.3",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    for kind in ("vllm", "llamacpp"):
        assert f"== {kind}: 3 sessions, 9 calls per run" in out
    lines = [ln.split() for ln in out.splitlines() if ln.split()[:1] in
             (["saga"], ["vllm-affinity"], ["vllm-rr"])]
    assert len(lines) == 6
    for cols in lines:
        tct, hit_rate, sim, errors = float(cols[1]), cols[3], float(cols[4]), int(cols[7])
        assert tct > 0 and sim > 0 and errors == 0
        assert float(hit_rate.rstrip("%")) > 0  # the sessions' prompts extend one another
