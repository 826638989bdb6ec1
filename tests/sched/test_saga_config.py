"""SagaConfig refuses a field set where the setting it acts through is off, and every
configuration the docs, benchmarks and scripts write still loads."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from saga.sched.registry import build_policy, list_policies
from saga.sched.saga.config import DEPENDENT_FIELDS, SagaConfig

ROOT = Path(__file__).resolve().parents[2]

# (the field set alone, the message's start, the same field with what it needs)
REFUSED: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"pin_host_copy": True}, "pin_host_copy needs pin_with_host = true",
     {"pin_with_host": True}),
    ({"decode_guard_backlog_share": 0.5},
     "decode_guard_backlog_share needs decode_guard_backlog set",
     {"decode_guard_backlog": 4}),
    ({"decode_guard_share": None, "decode_guard_backlog": 4},
     "decode_guard_backlog needs decode_guard_share or decode_guard_backlog_share set",
     {"decode_guard_backlog_share": 0.5}),
    ({"decode_guard_share": None, "decode_guard_decodes": 3},
     "decode_guard_decodes needs a decode guard (decode_guard_share",
     {"decode_guard_share": 0.05}),
    ({"decode_guard_share": None, "decode_guard_per_decode": True},
     "decode_guard_per_decode needs a decode guard (decode_guard_share",
     {"decode_guard_backlog": 4, "decode_guard_backlog_share": 0.5}),
    ({"steal": False, "steal_margin": 0.3}, "steal_margin needs steal = true",
     {"steal": True}),
    ({"steal": False, "steal_min_gain": 1.0}, "steal_min_gain needs steal = true",
     {"steal": True}),
    ({"steal": False, "steal_curse": False}, "steal_curse needs steal = true",
     {"steal": True}),
    ({"steal": False, "steal_imposed": False}, "steal_imposed needs steal = true",
     {"steal": True}),
    ({"steal_curse": False, "steal_noise_window": 64},
     "steal_noise_window needs steal_curse = true", {"steal_curse": True}),
    ({"slot_fit": False, "slot_fit_slack": 2}, "slot_fit_slack needs slot_fit = true",
     {"slot_fit": True}),
    ({"afs": False, "queue_order": "attained"}, "queue_order needs afs = true",
     {"afs": True}),
    ({"afs": False, "fit_first_wait": None}, "fit_first_wait needs afs = true",
     {"afs": True}),
    ({"afs": False, "warm_first_wait": 5.0}, "warm_first_wait needs afs = true",
     {"afs": True}),
    ({"afs": False, "preempt_gap": 10.0}, "preempt_gap needs afs = true", {"afs": True}),
    ({"preempt_gap": None, "max_fair_preemptions": 2},
     "max_fair_preemptions needs preempt_gap set", {"preempt_gap": 30.0}),
    ({"queue_order": "remaining", "gittins_window": 64},
     'gittins_window needs queue_order = "gittins" or "gittins_heavy_tailed"',
     {"queue_order": "gittins"}),
    ({"queue_order": "attained", "gittins_min_sessions": 4},
     'gittins_min_sessions needs queue_order = "gittins" or "gittins_heavy_tailed"',
     {"queue_order": "gittins_heavy_tailed"}),
    ({"predict_end": False, "end_confidence": 0.8}, "end_confidence needs predict_end = true",
     {"predict_end": True}),
    ({"predict_end": False, "gate_end_min_ends": 3},
     "gate_end_min_ends needs predict_end = true", {"predict_end": True}),
    ({"admission": False, "defer_best_effort_at": 0.8},
     "defer_best_effort_at needs admission = true", {"admission": True}),
    ({"admission": False, "max_queue": 10.0}, "max_queue needs admission = true",
     {"admission": True}),
    ({"admission": False, "max_defer_best_effort": 60.0},
     "max_defer_best_effort needs admission = true", {"admission": True}),
]


@pytest.mark.parametrize(("fields", "message", "with_needed"), REFUSED,
                         ids=[next(reversed(f)) for f, _, _ in REFUSED])
def test_a_field_without_the_setting_it_acts_through_is_refused(
        fields: dict[str, Any], message: str, with_needed: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        SagaConfig(**fields)
    config = SagaConfig(**{**fields, **with_needed})
    assert all(getattr(config, name) == value for name, value in with_needed.items())


def test_every_dependent_field_has_a_refusal_case() -> None:
    assert {name for name, _, _ in DEPENDENT_FIELDS} == {
        message.split(" needs ")[0] for _, message, _ in REFUSED}


def test_a_dependent_field_at_its_default_stays_valid_with_its_setting_off() -> None:
    """The ablations switch a mechanism off and leave its fields at their defaults."""
    config = SagaConfig(steal=False, afs=False, admission=False, predict_end=False,
                        slot_fit=False, decode_guard_share=None, steal_margin=0.15,
                        queue_order="gittins_heavy_tailed")
    assert (config.steal_margin, config.queue_order, config.decode_guard_decodes) == (
        0.15, "gittins_heavy_tailed", 2)


@pytest.mark.parametrize("name", list_policies())
def test_every_registered_policy_builds(name: str) -> None:
    assert build_policy(name).name == name


# `saga:FIELD=JSON;...` (capacity_probe.py, its +gate and +guard forms), SagaConfig(k=v, ...)
# in Python, and the `{"saga": {...}}` of SAGA_VLLM_SCHEDULER
_SPEC = re.compile(r"(?:^|[\s`'\"(])(?:saga|[a-z0-9-]+\+(?:gate|guard)):"
                   r"([a-z_]+=[^\s,`']+)")
_CALL = re.compile(r"SagaConfig\(([^()]*)\)")
_SCHEDULER_JSON = re.compile(r"SAGA_VLLM_SCHEDULER='(\{.*?\})'")


def _written_configs() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "scripts").glob("*")),
             *sorted((ROOT / "src/saga/scenarios").glob("*.toml"))]
    for path in paths:
        if not path.is_file():
            continue
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for match in _SPEC.finditer(text):
            try:
                fields = {k: json.loads(v) for k, v in
                          (part.split("=", 1) for part in match.group(1).split(";"))}
            except (ValueError, json.JSONDecodeError):
                continue  # a placeholder (FIELD=JSON, share=X)
            found.append((where, fields))
        for match in _CALL.finditer(text):
            try:
                call = ast.parse(f"f({match.group(1)})", mode="eval").body
                assert isinstance(call, ast.Call)
                fields = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                          if k.arg is not None}
            except (SyntaxError, ValueError):
                continue  # SagaConfig(**overrides)
            if Ellipsis not in fields.values():  # SagaConfig(gate_lifo_after=...)
                found.append((where, fields))
        for match in _SCHEDULER_JSON.finditer(text):
            found.append((where, json.loads(match.group(1)).get("saga", {})))
    return found


def test_every_configuration_the_docs_and_benchmarks_write_loads() -> None:
    """Fields since removed (a docs section's history) may be unknown; no written
    configuration is refused for anything else."""
    written = _written_configs()
    assert ("docs/saga.md", {"steal_margin": 0.3, "memory_budget": 0.8}) in written
    assert ("docs/engines.md", {"tenant_weights": {"acme": 2}}) in written
    assert any(fields == {"pin_with_host": True, "pin_host_copy": True}
               for _, fields in written)
    for where, fields in written:
        try:
            SagaConfig(**fields)
        except ValidationError as error:
            kinds = {e["type"] for e in error.errors()}
            assert kinds == {"extra_forbidden"}, (where, fields, error)
