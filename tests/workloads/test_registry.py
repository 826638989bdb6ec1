"""Registry: names, params coercion and errors, ordering, the default scenario."""

from __future__ import annotations

import pytest
from workload_helpers import FIXTURES

from saga.errors import UserError
from saga.workloads import Workload, build_workload, list_workloads

NAMES = ["agents", "azure-code", "azure-conv", "browser-agent", "chat", "claude-code",
         "coding-agent", "fanout", "interference", "lmcache-magagent", "lmcache-miniswe",
         "lmcache-taubench", "mooncake"]


def test_names() -> None:
    assert list_workloads() == NAMES


def test_agents_default_is_small_and_deterministic() -> None:
    wl = build_workload("agents")
    assert isinstance(wl, Workload) and wl.closed_loop is None
    assert len(wl.workflows) == 40
    assert wl.workflows[-1].arrival < 180
    assert max(c.prompt.tokens for w in wl.workflows for c in w.calls) <= 30_000
    assert {w.tenant for w in wl.workflows} == {"coding", "browser"}
    assert all(w.slo == 3.0 for w in wl.workflows)
    assert wl == build_workload("agents", seed=0)
    assert wl != build_workload("agents", seed=1)


def test_sorted_by_arrival_then_id() -> None:
    wl = build_workload("interference", params={"duration": "60"})
    keys = [(w.arrival, w.id) for w in wl.workflows]
    assert keys == sorted(keys)
    tenants = {w.tenant: w.slo for w in wl.workflows}
    assert tenants == {"interactive-coding": 3.0, "interactive-browser": 3.0, "batch": None}


def test_params_coerced_from_strings() -> None:
    wl = build_workload("coding-agent", seed=3, params={
        "count": "7", "slo": "2.5", "arrival": "gamma", "concurrency": "3", "tenant": "x"})
    assert len(wl.workflows) == 7 and wl.closed_loop == 3
    assert {(w.tenant, w.slo) for w in wl.workflows} == {("x", 2.5)}
    assert build_workload("chat", params={"slo": "none", "count": "2"}).workflows[0].slo is None


@pytest.mark.parametrize(("name", "params", "message"), [
    ("nope", {}, "unknown workload 'nope'; choose one of: agents,"),
    ("chat", {"bogus": "1"}, "workload 'chat': unknown param 'bogus'; valid: count,"),
    ("chat", {"count": "x"}, "workload 'chat': param count: Input should be a valid integer"),
    ("fanout", {"min_workers": "9"}, "min_workers must be <= max_workers"),
    ("agents", {"count": "3"}, "workload 'agents': unknown param 'count'; valid: (none)"),
    ("chat", {"count": "x", "bogus": "1"},
     "integer, unable to parse string as an integer; unknown param 'bogus'; valid:"),
])
def test_param_errors(name: str, params: dict[str, str], message: str) -> None:
    with pytest.raises(UserError) as e:
        build_workload(name, params=params)
    assert message in str(e.value)


def test_reader_with_user_path() -> None:
    wl = build_workload("claude-code", params={"path": str(FIXTURES / "claude_code_mini.jsonl"),
                                               "human_gap": "zero", "tenant": "me"})
    assert [w.id for w in wl.workflows] == ["s1", "s2"]
    assert {w.tenant for w in wl.workflows} == {"me"}
    assert build_workload("mooncake", params={"path": str(FIXTURES / "mooncake_mini.jsonl"),
                                              "limit": "2"}).workflows[1].id == "mc-00001"


def test_reader_missing_file(tmp_path: object) -> None:
    with pytest.raises(UserError, match="no such file"):
        build_workload("azure-code", params={"path": "/nonexistent/x.csv"})
