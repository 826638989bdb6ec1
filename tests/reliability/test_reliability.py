"""Faults, bad input, overload and tenant isolation on real processes (loopback only).

The scenarios live in ``scenarios.py``; ``scripts/reliability.py`` runs them larger and
writes docs/RELIABILITY.md. Here they run small and every row must hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from scenarios import (
    Outcome,
    agent_names_bound,
    agents_without_headers,
    backend_errors,
    bad_inputs,
    bad_traces,
    client_disconnects,
    closed_by_default,
    flood,
    fuzz,
    gateway_restart_with_redis,
    redis_faults,
    replica_killed,
    retry_elsewhere,
    slot_files,
    store_bound,
    tenant_graphs,
    tenant_isolation,
)

pytestmark = pytest.mark.timeout(120)


def _check(rows: list[Outcome]) -> None:
    bad = [f"{r.what}: {r.result} {r.details or ''}" for r in rows if not r.ok]
    assert not bad, "\n".join(bad)


def test_replica_killed_mid_workflow_moves_and_rejoins(tmp_path: Path) -> None:
    _check(replica_killed(tmp_path, workflows=4, calls=3))


def test_backend_5xx_and_timeouts_get_bounded_retries(tmp_path: Path) -> None:
    _check(backend_errors(tmp_path, calls=8))


def test_client_disconnect_cancels_the_backend_call(tmp_path: Path) -> None:
    _check(client_disconnects(tmp_path))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_gateway_restart_keeps_affinity_and_accounts(tmp_path: Path) -> None:
    _check(gateway_restart_with_redis(tmp_path, workflows=4))


def test_bad_input_is_a_clear_4xx(tmp_path: Path) -> None:
    _check(bad_inputs(tmp_path))


def test_bad_trace_lines_name_line_and_field(tmp_path: Path) -> None:
    _check(bad_traces(tmp_path))


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    _check([fuzz(tmp_path, examples=15)])


def test_flood_is_shed_with_429_and_memory_stays_bounded(tmp_path: Path) -> None:
    _check([flood(tmp_path, total=1500, clients=150)])


def test_tenants_cannot_act_for_each_other(tmp_path: Path) -> None:
    _check(tenant_isolation(tmp_path))


def test_real_agent_request_shapes_need_no_saga_header(tmp_path: Path) -> None:
    _check(agents_without_headers(tmp_path))


def test_a_look_alike_agent_flood_leaves_another_tenants_graph(tmp_path: Path) -> None:
    _check([tenant_graphs(tmp_path, flood=4)])


def test_a_new_agent_name_per_workflow_is_folded_past_the_tenants_limit(
        tmp_path: Path) -> None:
    _check([agent_names_bound(tmp_path, names=6, limit=2)])


def test_admin_pages_are_closed_without_an_admin_key(tmp_path: Path) -> None:
    _check([closed_by_default(tmp_path)])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_calls_go_on_through_a_hung_and_a_restarted_redis(tmp_path: Path) -> None:
    _check(redis_faults(tmp_path, calls=5))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_the_store_is_bounded_by_count(tmp_path: Path) -> None:
    _check([store_bound(tmp_path, workflows=15, limit=5)])


def test_slot_files_are_deleted_and_bounded(tmp_path: Path) -> None:
    _check([slot_files(tmp_path, workflows=12, budget_files=3)])


def test_a_retry_goes_to_another_backend(tmp_path: Path) -> None:
    _check([retry_elsewhere(tmp_path, calls=4)])


def _soak_report(live_end: int) -> dict[str, Any]:
    """A scripts/soak.py --heap report whose live bytes go from 100 MiB to ``live_end``."""
    mib = 2**20

    def facts(live: int, rss_kb: int, trimmed: int | None) -> dict[str, Any]:
        return {"rss_kb": rss_kb, "gc_objects": 80000, "rss_after_trim_kb": trimmed,
                "pymalloc": {"live_bytes": live - 20 * mib, "total_bytes": 32 * mib},
                "heap": {"in_use_bytes": 20 * mib, "arena_bytes": 24 * mib,
                         "free_bytes": 4 * mib}}

    ends = {"rss_mb": 1.0, "open_files": 1, "redis_keys": 1, "slot_files": 0,
            "store_sessions": 1, "sessions_evicted": 0}
    return {"minutes": 1, "rate": 1, "achieved_rate": 1, "replicas": 2, "disconnect": 0.0,
            "events": [], "sent": 10, "statuses": {"200": 10}, "lost": 0,
            "answered_twice_bound": 0, "rss_growth_pct": 0.0, "start": ends, "end": ends,
            "trace_malloc": {"start": facts(100 * mib, 90 * 1024, None),
                             "end": facts(live_end, 99 * 1024, 97 * 1024)}}


def test_soak_memory_row_holds_while_live_bytes_grow_under_ten_percent() -> None:
    from scenarios import soak_rows

    mib = 2**20
    held = soak_rows(_soak_report(109 * mib))[-1]
    assert held.what == "gateway memory by allocator, start to end (--heap)"
    assert held.result == (
        "live (pymalloc blocks + glibc in use) 100.0 -> 109.0 MB (+9.0 %); pymalloc arenas "
        "32.0 -> 32.0 MB; glibc heap 24.0 -> 24.0 MB, of it free 4.0 -> 4.0 MB; gc objects "
        "80000 -> 80000; RSS at the end 99.0 MB, 97.0 MB after malloc_trim")
    assert held.ok
    assert not soak_rows(_soak_report(111 * mib))[-1].ok
    report = _soak_report(109 * mib)
    del report["trace_malloc"]  # a soak without --heap: the three rows of before
    assert len(soak_rows(report)) == 3
