"""Tests of the canonical trace format: validation, round trips, gzip, atomic writes."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from saga.core.trace import (
    TraceError,
    iter_trace,
    parse_workflow,
    read_trace,
    validate_workflow,
    workflow_to_dict,
    write_trace,
)
from saga.core.workflow import Call, Prompt, Workflow
from saga.errors import UserError

GOOD: dict[str, Any] = {
    "workflow": "w-17", "tenant": "acme", "agent": "swe-agent", "arrival": 12.5, "slo": 3.0,
    "block_tokens": 64,
    "calls": [
        {"id": "c0", "after": [], "gap": 0.0, "tool": None,
         "prompt": {"shared": [["sys:swe-agent", 3000]], "blocks": [[0, 40]], "tokens": 5600},
         "output_tokens": 310},
        {"id": "c1", "after": ["c0"], "gap": 4.2, "tool": "bash",
         "prompt": {"shared": [["sys:swe-agent", 3000]], "blocks": [[0, 46]], "tokens": 6000},
         "output_tokens": 20},
    ],
}


def _with(path: str, value: object) -> dict[str, Any]:
    """GOOD with the dotted ``path`` set to ``value`` (or deleted when value is _DEL)."""
    obj = copy.deepcopy(GOOD)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target: Any = obj
    for k in keys[:-1]:
        target = target[k]
    if value is _DEL:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return obj


_DEL = object()

BAD = [
    ("workflow", "", "workflow", "must be a non-empty string"),
    ("workflow", _DEL, "workflow", "is missing"),
    ("tenant", 3, "tenant", "must be a non-empty string"),
    ("arrival", -1, "arrival", "must be >= 0"),
    ("arrival", float("inf"), "arrival", "must be finite"),
    ("arrival", True, "arrival", "must be a number"),
    ("slo", 0.5, "slo", "must be >= 1"),
    ("block_tokens", 0, "block_tokens", "must be >= 1"),
    ("block_tokens", 64.0, "block_tokens", "must be an integer"),
    ("calls", [], "calls", "must hold at least one call"),
    ("calls", {}, "calls", "must be a list"),
    ("calls.1.id", "c0", "calls[1].id", "duplicate call id 'c0'"),
    ("calls.1.after", ["c9"], "calls[1].after[0]", "unknown call id 'c9'"),
    ("calls.0.after", ["c1"], "calls[0].after[0]", "names a later call or itself 'c1'"),
    ("calls.1.gap", -0.1, "calls[1].gap", "must be >= 0"),
    ("calls.1.tool", 5, "calls[1].tool", "must be a string or null"),
    ("calls.1.prompt.tokens", 0, "calls[1].prompt.tokens", "must be >= 1"),
    ("calls.1.prompt.tokens", False, "calls[1].prompt.tokens", "must be an integer"),
    ("calls.1.prompt.tokens", 5000, "calls[1].prompt.tokens",
     "5000 is less than the shared prefixes (3000) plus 46 blocks of 64 tokens (5944)"),
    ("calls.1.prompt.blocks", [[0, 0]], "calls[1].prompt.blocks[0][1]", "must be >= 1"),
    ("calls.1.prompt.blocks", [[-1, 2]], "calls[1].prompt.blocks[0][0]", "must be >= 0"),
    ("calls.1.prompt.blocks", [[1]], "calls[1].prompt.blocks[0]", "must be a [first_id"),
    ("calls.1.prompt.shared", [["x", 0]], "calls[1].prompt.shared[0][1]", "must be >= 1"),
    ("calls.1.prompt.shared", [[1, 5]], "calls[1].prompt.shared[0][0]", "non-empty string"),
    ("calls.1.output_tokens", 0, "calls[1].output_tokens", "must be >= 1"),
    ("calls.1.output_tokens", _DEL, "calls[1].output_tokens", "is missing"),
    ("calls.1.prompt", _DEL, "calls[1].prompt", "is missing"),
]


@pytest.mark.parametrize(("path", "value", "field", "reason"), BAD)
def test_bad_field_names_line_and_field(tmp_path: Path, path: str, value: object, field: str,
                                        reason: str) -> None:
    f = tmp_path / "w.jsonl"
    good2 = dict(GOOD, workflow="w-other")
    f.write_text(json.dumps(good2) + "\n\n" + json.dumps(_with(path, value)) + "\n")
    with pytest.raises(TraceError) as e:
        read_trace(f)
    assert (e.value.source, e.value.line, e.value.field) == (str(f), 3, field)
    assert reason in e.value.reason
    assert str(e.value).startswith(f"{f}:3: {field}: ")


def test_error_format_example() -> None:
    err = TraceError("unknown call id 'c9'", source="w.jsonl", line=12, field="calls[1].after")
    assert str(err) == "w.jsonl:12: calls[1].after: unknown call id 'c9'"
    assert isinstance(err, UserError)


def test_invalid_json_and_duplicate_workflow(tmp_path: Path) -> None:
    f = tmp_path / "w.jsonl"
    f.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(TraceError) as e:
        read_trace(f)
    assert e.value.line == 2 and e.value.field is None and "invalid JSON" in e.value.reason
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(TraceError) as e:
        read_trace(f)
    assert (e.value.line, e.value.field) == (2, "workflow")
    assert e.value.reason == "duplicate workflow id 'w-17'"


def test_not_an_object_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as e:
        parse_workflow([1], source="x", line=4)
    assert str(e.value) == "x:4: workflow: a line must be a JSON object, got list"
    with pytest.raises(UserError, match="no such file"):
        read_trace(tmp_path / "absent.jsonl")


def test_defaults_and_extra_fields() -> None:
    obj = {"workflow": "w", "arrival": 0, "calls": [{"id": "a", "prompt": {"tokens": 5},
                                                     "output_tokens": 1, "note": "x"}],
           "origin": {"k": [1, 2]}}
    w = parse_workflow(obj)
    assert (w.tenant, w.agent, w.slo, w.block_tokens) == ("default", "agent", None, 64)
    assert w.calls[0] == Call("a", Prompt(5), 1)
    assert w.extra == {"origin": {"k": [1, 2]}}
    assert workflow_to_dict(w)["origin"] == {"k": [1, 2]}


def _workflows() -> list[Workflow]:
    w = parse_workflow(GOOD)
    return [w, Workflow(
        id="w-2", tenant="t", agent="a", arrival=1.0, slo=None, block_tokens=16,
        calls=(Call("x", Prompt(40, (), ((3, 2),)), 7),
               Call("y", Prompt(70, (("s", 5),), ((3, 4),)), 9, ("x",), 1.5, "bash"),
               Call("z", Prompt(9), 2, ("x", "y"), 0.0, None)),
        extra={"source": "test"})]


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    ws = _workflows()
    f = tmp_path / name
    assert write_trace(ws, f) == 2
    back = read_trace(f)
    assert back == ws
    assert [w.extra for w in back] == [w.extra for w in ws]
    assert list(iter_trace(f)) == ws
    if name.endswith(".gz"):
        with gzip.open(f, "rt") as g:
            assert json.loads(g.readline())["workflow"] == "w-17"


def test_gzip_output_is_deterministic(tmp_path: Path) -> None:
    write_trace(_workflows(), tmp_path / "a.jsonl.gz")
    write_trace(_workflows(), tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    f = tmp_path / "out.jsonl"
    f.write_text("old\n")

    def broken() -> Any:
        yield from _workflows()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_trace(broken(), f)
    assert f.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    with pytest.raises(RuntimeError):
        write_trace(broken(), tmp_path / "new.jsonl.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_to_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        write_trace(_workflows(), tmp_path / "no" / "x.jsonl")


def test_validate_workflow_checks_built_objects() -> None:
    w = Workflow("w", "t", "a", 0.0, (Call("c", Prompt(10, (), ((0, 1),)), 1),),
                 block_tokens=64)
    with pytest.raises(TraceError) as e:
        validate_workflow(w, source="gen", line=None)
    assert str(e.value) == ("gen: calls[0].prompt.tokens: 10 is less than the shared "
                            "prefixes (0) plus 1 blocks of 64 tokens (64)")


def test_corrupt_gzip(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl.gz"
    f.write_bytes(b"not gzip at all")
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(f)
