"""Learned graphs shared between gateways through the store.

What the policy's graphs observe is recorded in an outbox; each exchange publishes it
and applies what the other gateways published (from a cursor into the store's log).
A store error is logged and counted, never raised: serving goes on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque

from saga.gateway.config import GatewayConfig
from saga.gateway.metrics import Metrics, PromText
from saga.gateway.store import FIRST_CURSOR, Store
from saga.sched.saga.graph import GraphStore, Observation

#: Graph sync reads the log in pages of this many entries, at most this many pages per
#: exchange: a gateway catching up on a long log does it over several exchanges, each
#: applying a bounded amount between two awaits.
_SYNC_PAGE_ENTRIES = 64
_SYNC_PAGES = 16
log = logging.getLogger("saga.gateway")


class GraphSync:
    """The exchange of one gateway's learned-graph observations with the others."""

    def __init__(
        self, graphs: GraphStore | None, config: GatewayConfig, store: Store, metrics: Metrics,
    ) -> None:
        """Record what ``graphs`` learn (None: the policy learns none), for :meth:`exchange`."""
        self.graphs = graphs
        self.config = config
        self.store = store
        self.metrics = metrics
        self.enabled = graphs is not None and bool(config.graph_sync_interval)
        # a fresh id per process: a restarted gateway lost what it learned, so it reads
        # its former self's observations as another gateway's
        self.gateway_id = uuid.uuid4().hex
        self.outbox: deque[Observation] = deque(maxlen=config.graph_sync_backlog)
        self._cursor = FIRST_CURSOR
        self._failing = False
        if self.enabled and graphs is not None:
            graphs.set_sink(self._record)

    async def loop(self) -> None:
        interval = self.config.graph_sync_interval or 1.0
        while True:  # at once first: a new gateway starts from what the others learned
            await self.exchange()
            await asyncio.sleep(interval)

    def _record(self, observation: Observation) -> None:
        if len(self.outbox) == self.outbox.maxlen:
            self.metrics.graph_observations["dropped"] += 1
        self.outbox.append(observation)

    async def exchange(self) -> None:
        """One exchange of learned-graph observations with the other gateways: publish
        what this gateway's graphs observed, then learn what the others published.

        A store error is logged and counted, never raised: calls are served meanwhile,
        unpublished observations are kept for the next exchange (at most
        ``graph_sync_backlog``) and reading resumes from the same cursor."""
        if not self.enabled or self.graphs is None:
            return
        published = await self.publish()
        fetched = await self._apply(self.graphs)
        if published and fetched and self._failing:
            self._failing = False
            log.info("graph sync: the store answers again")

    async def publish(self) -> bool:
        if not self.outbox:
            return True
        batch = list(self.outbox)
        self.outbox.clear()  # what is observed while publishing queues behind the batch
        try:
            await self.store.publish_observations(self.gateway_id, batch)
        except asyncio.CancelledError:
            self._requeue(batch)  # stop() publishes it last
            raise
        except Exception as failure:  # any store error: serving must go on
            self._requeue(batch)
            self._failed("publish", failure)
            return False
        self.metrics.graph_observations["published"] += len(batch)
        return True

    def _requeue(self, batch: list[Observation]) -> None:
        """Put an unpublished batch back before what was observed meanwhile; beyond
        ``graph_sync_backlog`` the oldest go (the newest describe the agents best)."""
        kept = [*batch, *self.outbox]
        self.outbox.clear()
        self.outbox.extend(kept)
        self.metrics.graph_observations["dropped"] += len(kept) - len(self.outbox)

    async def _apply(self, graphs: GraphStore) -> bool:
        for _ in range(_SYNC_PAGES):
            try:
                cursor, batch = await self.store.fetch_observations(
                    self.gateway_id, self._cursor, _SYNC_PAGE_ENTRIES)
            except Exception as failure:  # any store error: serving must go on
                self._failed("fetch", failure)
                return False
            if cursor == self._cursor:
                break
            self._cursor = cursor
            self.metrics.graph_observations["applied"] += graphs.apply(batch)
        return True

    def _failed(self, op: str, failure: Exception) -> None:
        self.metrics.graph_sync_errors[op] += 1
        if not self._failing:  # once per outage, not every interval
            self._failing = True
            log.warning("graph sync: %s failed, retrying every %gs: %r", op,
                        self.config.graph_sync_interval, failure)

    def render(self, p: PromText) -> None:
        m = self.metrics
        p.family("saga_graph_observations_total", "counter",
                 "Learned-graph observations shared through the store: published by this "
                 "gateway, applied from the others, dropped (backlog full).")
        for event in ("published", "applied", "dropped"):
            p.sample("saga_graph_observations_total", m.graph_observations[event],
                     (("event", event),))
        p.family("saga_graph_sync_errors_total", "counter",
                 "Store errors in graph sync, by operation (retried every interval).")
        for op in ("publish", "fetch"):
            p.sample("saga_graph_sync_errors_total", m.graph_sync_errors[op], (("op", op),))
        p.family("saga_graph_sync_backlog", "gauge", "Observations waiting to be published.")
        p.sample("saga_graph_sync_backlog", len(self.outbox))
