"""The gateway's ``/metrics`` page (Prometheus text format), read from its parts."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from saga.gateway.backends import LlamaCppBackend
from saga.gateway.metrics import PromText

if TYPE_CHECKING:
    from saga.gateway.app import Gateway


async def render_metrics(gateway: Gateway) -> str:
    """The gateway's Prometheus text: calls, queues, backends, tenants, decisions."""
    m = gateway.metrics
    p = PromText()
    p.family("saga_requests_total", "counter", "Calls answered, by tenant and HTTP status.")
    for (tenant, status), n in sorted(m.requests.items()):
        p.sample("saga_requests_total", n, (("tenant", tenant), ("status", str(status))))
    p.family("saga_queue_length", "gauge", "Calls waiting at the gateway.")
    p.sample("saga_queue_length", m.admission_waiting, (("queue", "admission"),))
    for b, view in zip(gateway.backends, gateway.views, strict=True):
        p.sample("saga_queue_length", len(view.waiting),
                 (("queue", "dispatch"), ("backend", b.label)))
    p.family("saga_replica_in_flight", "gauge", "Calls sent to a backend and not done.")
    p.family("saga_replica_up", "gauge", "1 if the backend passed its last health check.")
    p.family("saga_replica_cached_blocks", "gauge", "Blocks in the approximate prefix index.")
    for b, v in zip(gateway.backends, gateway.views, strict=True):
        labels = (("backend", b.label),)
        p.sample("saga_replica_in_flight", len(v.running), labels)
        p.sample("saga_replica_up", 1 if v.up else 0, labels)
        p.sample("saga_replica_cached_blocks", v.kv.used_blocks, labels)
    stats = await asyncio.gather(*(b.prefix_cache() for b in gateway.backends))
    for name, what in (("queries", "looked up in"), ("hits", "found in")):
        if all(st is None for st in stats):
            break
        family = f"saga_backend_prefix_cache_{name}_total"
        p.family(family, "counter",
                 f"Prompt tokens the engine {what} its prefix cache (its own metrics).")
        for b, st in zip(gateway.backends, stats, strict=True):
            if st is not None:
                p.sample(family, st.queries if name == "queries" else st.hits,
                         (("backend", b.label),))
    p.family("saga_tenant_slowdown", "summary",
             "Per call: gateway latency over backend latency (queueing inflation).")
    for tenant, s in sorted(m.tenant_slowdown.items()):
        p.summary("saga_tenant_slowdown", s, (("tenant", tenant),))
    p.family("saga_tenant_slo_calls_total", "counter",
             "Calls of tenants with an SLO, by whether the call's slowdown at the gateway "
             "(its queueing inflation) met the tenant's SLO.")
    for (tenant, met), n in sorted(m.tenant_slo.items()):
        p.sample("saga_tenant_slo_calls_total", n,
                 (("tenant", tenant), ("met", "true" if met else "false")))
    p.family("saga_tenant_latency_seconds", "summary", "Per call latency at the gateway.")
    for tenant, s in sorted(m.tenant_latency.items()):
        p.summary("saga_tenant_latency_seconds", s, (("tenant", tenant),))
    p.family("saga_tenant_tokens_total", "counter",
             "Tokens served per tenant (shared store: all gateways).")
    tokens = await gateway.stored_op("metrics", gateway.store.tenant_tokens())
    for tenant, served in sorted((tokens or {}).items()):
        p.sample("saga_tenant_tokens_total", served, (("tenant", tenant),))
    p.family("saga_admission_decisions_total", "counter", "Admission verdicts.")
    for verdict, n in sorted(m.admissions.items()):
        p.sample("saga_admission_decisions_total", n, (("verdict", verdict),))
    p.family("saga_retention_decisions_total", "counter", "Retention decisions by kind.")
    for kind, n in sorted(m.retentions.items()):
        p.sample("saga_retention_decisions_total", n, (("kind", kind),))
    p.family("saga_retention_errors_total", "counter", "KV control calls that failed.")
    p.sample("saga_retention_errors_total", m.retention_errors)
    p.family("saga_retain_wait_timeouts_total", "counter",
             "Calls sent before their workflow's last retention step ended (retain_wait).")
    p.sample("saga_retain_wait_timeouts_total", m.retain_wait_timeouts)
    p.family("saga_decision_latency_seconds", "summary", "Time in the scheduler core.")
    p.summary("saga_decision_latency_seconds", m.decision_latency)
    p.family("saga_retries_total", "counter", "Backend calls made again after a failure.")
    p.sample("saga_retries_total", m.retries)
    p.family("saga_client_disconnects_total", "counter",
             "Calls whose client left before the end (backend call closed).")
    p.sample("saga_client_disconnects_total", m.client_disconnects)
    p.family("saga_shed_total", "counter", "Calls refused with a 429 at a bound.")
    for bound, n in sorted(m.shed.items()):
        p.sample("saga_shed_total", n, (("bound", bound),))
    names = gateway.agent_names
    p.family("saga_agent_names", "gauge",
             "Distinct agent names a tenant's calls are learned under on this gateway "
             "(at most max_agents_per_tenant; the catch-all not counted).")
    for tenant in names.tenants():
        p.sample("saga_agent_names", names.count(tenant), (("tenant", tenant),))
    p.family("saga_agent_names_folded_total", "counter",
             "Calls whose new agent name was past the tenant's max_agents_per_tenant and "
             "was learned under the tenant's catch-all agent '(other)'.")
    for tenant, n in sorted(names.folded.items()):
        p.sample("saga_agent_names_folded_total", n, (("tenant", tenant),))
    p.family("saga_workflows_active", "gauge", "Workflows this gateway is tracking.")
    p.sample("saga_workflows_active", len(gateway.workflows))
    store = gateway.store
    sessions = await gateway.stored_op("metrics", store.session_count())
    p.family("saga_store_sessions", "gauge", "Workflow sessions in the store.")
    if sessions is not None:
        p.sample("saga_store_sessions", sessions)
    p.family("saga_store_sessions_evicted_total", "counter",
             "Sessions this gateway evicted to keep the store within max_sessions.")
    p.sample("saga_store_sessions_evicted_total", store.evicted)
    p.family("saga_store_errors_total", "counter",
             "Store operations that failed; calls went on without shared state.")
    for op, n in sorted(m.store_errors.items()):
        p.sample("saga_store_errors_total", n, (("op", op),))
    p.family("saga_store_skipped_total", "counter",
             "Store operations skipped in the second after a failure (the store is down).")
    for op, n in sorted(m.store_skipped.items()):
        p.sample("saga_store_skipped_total", n, (("op", op),))
    p.family("saga_store_up", "gauge", "0 while the store is failing, else 1.")
    p.sample("saga_store_up", 0 if gateway.store_down else 1)
    slotted = [b for b in gateway.backends
               if isinstance(b, LlamaCppBackend) and b.slot_dir is not None]
    if slotted:
        p.family("saga_slot_files", "gauge", "Saved llama.cpp slot files on disk.")
        p.family("saga_slot_file_bytes", "gauge", "Bytes of saved llama.cpp slot files.")
        p.family("saga_slot_files_deleted_total", "counter",
                 "Slot files deleted, by reason (drop, end, sweep, budget).")
        p.family("saga_slot_actions_total", "counter",
                 "llama.cpp slot actions (save, restore, erase) by outcome: done, or failed "
                 "(a restore that found no room in the KV: the call recomputed its prompt).")
        for b in slotted:
            for action in sorted(b.actions):
                for outcome, counts in (("done", b.actions), ("failed", b.failed)):
                    p.sample("saga_slot_actions_total", counts[action],
                             (("backend", b.label), ("action", action), ("outcome", outcome)))
        for b in slotted:
            count, size = b.slot_files()
            p.sample("saga_slot_files", count, (("backend", b.label),))
            p.sample("saga_slot_file_bytes", size, (("backend", b.label),))
            for reason, n in sorted(b.deleted.items()):
                p.sample("saga_slot_files_deleted_total", n,
                         (("backend", b.label), ("reason", reason)))
    if gateway.graph_sync.enabled:
        gateway.graph_sync.render(p)
    return p.text()
