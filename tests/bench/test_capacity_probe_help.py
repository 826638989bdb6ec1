"""benchmarks/capacity_probe.py --help: its NAME+guard example names every field the guard
takes, whole on one line, and the example builds the guard it says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from saga.sched.guarded import GuardedPolicy
from saga.sched.saga.chunking import GuardRule
from saga.sched.saga.config import SagaConfig

ROOT = Path(__file__).resolve().parents[2]
GUARD_LINE = ("NAME+guard:decode_guard_share=0.0546875;decode_guard_decodes=2;"
              "decode_guard_backlog=null;decode_guard_backlog_share=null;"
              "decode_guard_per_decode=false")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity_probe",
                                                  ROOT / "benchmarks" / "capacity_probe.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up there
    spec.loader.exec_module(script)
    return script


def test_help_shows_every_guard_field_on_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    script = _script()
    monkeypatch.setenv("COLUMNS", "80")  # narrower than the line: it must not be wrapped
    monkeypatch.setattr(sys, "argv", ["capacity_probe.py", "--help"])
    with pytest.raises(SystemExit) as done:
        script.main()
    assert done.value.code == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert GUARD_LINE in lines


def test_the_guard_example_builds_the_guard_it_names() -> None:
    script = _script()
    assert script.guard_example() == GUARD_LINE
    policy = script.policy_named(GUARD_LINE.replace("NAME", "sglang", 1))
    assert isinstance(policy, GuardedPolicy)
    assert policy.guard == GuardRule.of(SagaConfig()) == GuardRule(
        share=0.0546875, decodes=2, backlog=None, backlog_share=None, per_decode=False)
