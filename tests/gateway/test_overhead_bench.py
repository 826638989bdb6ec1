"""benchmarks/gateway_overhead.py at a tiny rate, and the gateway's usage fast path."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from saga.gateway.relay import usage_tokens as _usage_tokens

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_benchmark_runs_all_targets_against_the_same_emulators(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gateway_overhead.py"),
         "--rates", "20", "--seconds", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["client"] == "lean"  # the same generator for every target
    (row,) = result["rows"]
    assert row["errors"] == 0
    assert row["served_ok"]  # the emulators served every answered call, whichever way
    for name in ("direct", "gateway"):
        assert row[f"{name}_calls"] == 10
        assert row[f"{name}_p50_ms"] > 0
    assert "saga gateway (added)" in proc.stdout
    if importlib.util.find_spec("sglang_router") is None:
        assert "not installed" in result["router_skipped"]
        assert "sglang-router skipped" in proc.stdout
    elif result["router_skipped"] is None:
        assert row["router_calls"] == 10 and row["router_p50_ms"] > 0
    else:  # installed but could not start here: said so, and the rest still ran
        assert math.isnan(row["router_p50_ms"])


@pytest.mark.parametrize("payload", [
    {"id": "x", "choices": [{"message": {"content": 'say "usage": {"total_tokens": 99}'}}],
     "usage": {"prompt_tokens": 6, "completion_tokens": 1, "total_tokens": 7,
               "prompt_tokens_details": {"cached_tokens": 0}}},
    {"choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}},
    {"usage": {"prompt_tokens_details": {"cached_tokens": 0}, "total_tokens": 9}},  # nested first
    {"usage": None},
    {"choices": [{"text": '"usage"'}]},
    {"usage": {"prompt_tokens": 1}},
])
def test_usage_tokens_fast_path_agrees_with_decoding(payload: dict[str, object]) -> None:
    usage = payload.get("usage") or {}
    assert isinstance(usage, dict)
    expected = int(usage.get("total_tokens", 0))
    for separators in ((", ", ": "), (",", ":")):
        assert _usage_tokens(json.dumps(payload, separators=separators).encode()) == expected
    assert _usage_tokens(b"not json") == 0
