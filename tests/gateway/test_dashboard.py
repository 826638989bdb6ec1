"""The Grafana dashboard (examples/grafana/saga-gateway.json) queries only metrics the
gateway exports, and covers what operators watch."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig
from saga.gateway.prometheus import render_metrics
from saga.integrations.engines import PrefixCacheStats

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "saga-gateway.json"
#: the series a Prometheus summary or histogram family adds to its name
_SERIES_SUFFIXES = ("", "_sum", "_count")
_METRIC = re.compile(r"\b(saga_[a-z0-9_]+)\b")


def _exported(tmp: Path) -> set[str]:
    """Every family the gateway's /metrics renders when all its parts are on (graph sync,
    engine prefix-cache counters, llama.cpp slot files)."""
    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "test-2", "public_metrics": True,
        "backends": [{"url": "http://127.0.0.1:1", "kind": "emulator"},
                     {"url": "http://127.0.0.1:2", "kind": "llamacpp",
                      "slot_save_path": str(tmp)}],
    })

    async def main() -> str:
        gateway = Gateway(config)
        await gateway.start()
        try:
            for backend in gateway.backends:
                async def stats() -> PrefixCacheStats:
                    return PrefixCacheStats(queries=10.0, hits=5.0)
                backend.prefix_cache = stats  # type: ignore[method-assign]
            return await render_metrics(gateway)
        finally:
            await gateway.stop()

    text = asyncio.run(main())
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_every_dashboard_query_names_an_exported_metric(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    series = {family + suffix for family in exported for suffix in _SERIES_SUFFIXES}
    exprs = _exprs(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 20
    named = [set(_METRIC.findall(e)) for e in exprs]
    assert all(named), [e for e, n in zip(exprs, named, strict=True) if not n]
    unknown = sorted(set().union(*named) - series)
    assert unknown == []


def test_the_dashboard_covers_what_operators_watch(tmp_path: Path) -> None:
    text = DASHBOARD.read_text()
    for metric in ("saga_admission_decisions_total", 'verdict=\\"defer\\"',
                   "saga_tenant_tokens_total", "saga_tenant_slo_calls_total",
                   'queue=\\"dispatch\\"', "saga_backend_prefix_cache_hits_total",
                   "saga_retries_total", "saga_graph_sync_backlog", "saga_store_errors_total",
                   "saga_slot_files", "saga_agent_names{", "saga_agent_names_folded_total"):
        assert metric in text, metric
    dashboard = json.loads(text)
    assert dashboard["uid"] == "saga-gateway"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}


def test_the_exported_set_is_what_the_page_renders(tmp_path: Path) -> None:
    # a check of the check: names that are not exported are caught
    exported = _exported(tmp_path)
    assert "saga_requests_total" in exported and "saga_slot_files" in exported
    assert "saga_graph_sync_backlog" in exported
    assert "saga_no_such_metric" not in exported
