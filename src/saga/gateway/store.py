"""Shared state behind a small interface: in-process by default, Redis for several gateways.

What is shared, and why:

* **sessions**: a workflow's home replica and whether it was admitted, so that a
  workflow's calls keep their affinity whichever gateway they reach, and are
  admitted once;
* **tenant accounts**: tokens each tenant was served (attained service, for fair
  share and metrics);
* **call statistics**: per (tenant, agent, tool) counts, latency and token sums (raw
  counters for operators; no policy reads them);
* **learned graph observations**: a log of what each gateway's Agent Execution
  Graphs observed (:class:`~saga.sched.saga.graph.Observation`), so that every
  gateway's graphs learn from the calls of all of them. Each entry is a batch tagged
  with the publishing gateway's id, so that a gateway skips its own; the log keeps
  the last ``graph_log_length`` entries (a gateway that falls further behind, or
  starts later, misses the older ones).

Every method is one round trip (Redis pipelines where several keys change), but a
session write that finds the store over ``max_sessions``, which evicts the least
recently placed sessions in a second one.

Redis commands time out (``socket_timeout``) and a lost connection is opened again on
the next command (one retry, after a short backoff), so a restarted Redis is used
again at once and a hung one fails fast instead of stalling the gateway (whose call
path then serves without shared state; :mod:`saga.gateway.app`).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from saga.gateway.config import StoreConfig
from saga.sched.saga.graph import Observation

#: The cursor before the first entry of the observation log.
FIRST_CURSOR = "0"
#: Most observations in one log entry: bounds an entry's size (a backlog after an outage
#: is published as several entries), while a second's observations usually fit in one.
ENTRY_OBSERVATIONS = 256
log = logging.getLogger("saga.gateway")


@dataclass(frozen=True, slots=True)
class Session:
    """What the store knows of a workflow: its home replica, if any, and admission."""

    home: int | None
    admitted: bool


class Store(ABC):
    """The state shared by gateway processes."""

    @abstractmethod
    async def session(self, workflow: str) -> Session: ...

    @abstractmethod
    async def set_home(self, workflow: str, replica: int, ttl: float) -> None: ...

    @abstractmethod
    async def mark_admitted(self, workflow: str, ttl: float) -> None: ...

    @abstractmethod
    async def record_call(
        self, tenant: str, agent: str, tool: str | None, tokens: int, latency: float
    ) -> None:
        """Account ``tokens`` to ``tenant`` and add the call to the graph statistics."""

    @abstractmethod
    async def tenant_tokens(self) -> dict[str, float]: ...

    @abstractmethod
    async def graph_stats(self, tenant: str, agent: str) -> dict[str, dict[str, float]]:
        """Per tool (``-`` for none) of ``tenant``'s agent: ``calls``, ``tokens``,
        ``latency`` sums."""

    @abstractmethod
    async def publish_observations(
        self, source: str, observations: Sequence[Observation]
    ) -> None:
        """Append what gateway ``source``'s graphs observed to the log, in order."""

    @abstractmethod
    async def fetch_observations(
        self, source: str, cursor: str, limit: int
    ) -> tuple[str, list[Observation]]:
        """The observations of at most ``limit`` log entries after ``cursor`` (from
        :data:`FIRST_CURSOR`, or a cursor this store returned) that gateways other than
        ``source`` published, in log order, and the cursor after those entries
        (``cursor`` itself when there is nothing new)."""

    #: Sessions this process evicted to stay within ``max_sessions``.
    evicted = 0

    @abstractmethod
    async def session_count(self) -> int:
        """Workflow sessions held."""

    async def ping(self) -> None:  # noqa: B027 (optional hook)
        """Raise if the store cannot be reached."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""


class MemoryStore(Store):
    """The state of one process, in dictionaries (the default)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_sessions: int = 1_000_000,
        graph_log_length: int = 1000,
    ) -> None:
        self._clock = clock
        self.max_sessions = max_sessions
        self._homes: dict[str, tuple[int, float]] = {}
        self._admitted: dict[str, float] = {}
        self._tokens: dict[str, float] = {}
        self._graph: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        # (sequence number, source, observations): gateways in one process sharing this
        # store read it as gateways in several read Redis's stream
        self._log: deque[tuple[int, str, tuple[Observation, ...]]] = deque(
            maxlen=graph_log_length
        )
        self._log_seq = 0

    async def session(self, workflow: str) -> Session:
        now = self._clock()
        home = self._homes.get(workflow)
        admitted = self._admitted.get(workflow, -1.0) > now
        return Session(home[0] if home is not None and home[1] > now else None, admitted)

    async def set_home(self, workflow: str, replica: int, ttl: float) -> None:
        self._homes.pop(workflow, None)  # re-insert: the dict's order is age
        self._homes[workflow] = (replica, self._clock() + ttl)
        self._bound()

    async def mark_admitted(self, workflow: str, ttl: float) -> None:
        self._admitted.pop(workflow, None)
        self._admitted[workflow] = self._clock() + ttl
        self._bound()

    def _bound(self) -> None:
        """At most ``max_sessions`` of each kind: the oldest session goes whole (same TTL:
        the first to expire), counted in :attr:`evicted`."""
        for table in (self._homes, self._admitted):
            while len(table) > self.max_sessions:
                oldest = next(iter(table))
                self._homes.pop(oldest, None)
                self._admitted.pop(oldest, None)
                self.evicted += 1

    async def session_count(self) -> int:
        return len(self._homes.keys() | self._admitted.keys())

    async def record_call(
        self, tenant: str, agent: str, tool: str | None, tokens: int, latency: float
    ) -> None:
        self._tokens[tenant] = self._tokens.get(tenant, 0.0) + tokens
        stats = self._graph.setdefault((tenant, agent), {}).setdefault(
            tool or "-", {"calls": 0.0, "tokens": 0.0, "latency": 0.0}
        )
        stats["calls"] += 1
        stats["tokens"] += tokens
        stats["latency"] += latency

    async def tenant_tokens(self) -> dict[str, float]:
        return dict(self._tokens)

    async def graph_stats(self, tenant: str, agent: str) -> dict[str, dict[str, float]]:
        return {tool: dict(v) for tool, v in self._graph.get((tenant, agent), {}).items()}

    async def publish_observations(
        self, source: str, observations: Sequence[Observation]
    ) -> None:
        for chunk in _chunks(observations):
            self._log_seq += 1
            self._log.append((self._log_seq, source, tuple(chunk)))

    async def fetch_observations(
        self, source: str, cursor: str, limit: int
    ) -> tuple[str, list[Observation]]:
        last = int(cursor)
        out: list[Observation] = []
        taken = 0
        for seq, origin, chunk in self._log:  # at most graph_log_length entries
            if seq <= last:
                continue
            if taken >= limit:
                break
            taken += 1
            last = seq
            if origin != source:
                out.extend(chunk)
        return str(last), out

    def expire(self) -> None:
        """Forget expired sessions (called now and then by the gateway)."""
        now = self._clock()
        self._homes = {w: v for w, v in self._homes.items() if v[1] > now}
        self._admitted = {w: t for w, t in self._admitted.items() if t > now}


class RedisStore(Store):
    """The same state in Redis, so that several gateway processes agree on it.

    Keys (under ``prefix``): ``home:{workflow}`` and ``admitted:{workflow}`` with a
    TTL, and sorted set ``sessions`` (workflow by time of its last session write; the
    entries older than the TTL are trimmed at each write, and beyond ``max_sessions``
    the oldest sessions are deleted); hash ``tenant_tokens``; hash
    ``graph:{tenant}/{agent}`` with fields ``{tool}:calls``, ``{tool}:tokens``,
    ``{tool}:latency``; stream ``graph_log`` of observation batches,
    entries ``{source, rows}`` (``rows``: JSON list of :meth:`Observation.to_row`),
    trimmed to about ``graph_log_length`` entries at each XADD.
    """

    def __init__(self, url: str, prefix: str = "saga:", graph_log_length: int = 1000,
                 max_sessions: int = 1_000_000, socket_timeout: float = 2.0,
                 connect_timeout: float = 1.0, max_connections: int = 64) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # a dropped connection (a restart) is reopened and the command sent once more; a
        # timeout is not retried (a hung Redis would only hang longer). At most
        # max_connections connections: a command waits for a free one (up to the socket
        # timeout) rather than failing when many calls use the store at once.
        pool = redis.BlockingConnectionPool.from_url(
            url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout, health_check_interval=30,
            max_connections=max_connections, timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1,
                        supported_errors=(RedisConnectionError,)),
        )
        self._redis: Any = redis.Redis(connection_pool=pool)
        self._p = prefix
        self._log_length = graph_log_length
        self.max_sessions = max_sessions

    async def ping(self) -> None:
        await self._redis.ping()

    async def session(self, workflow: str) -> Session:
        home, admitted = await self._redis.mget(
            self._p + "home:" + workflow, self._p + "admitted:" + workflow
        )
        return Session(int(home) if home is not None else None, admitted is not None)

    async def set_home(self, workflow: str, replica: int, ttl: float) -> None:
        await self._write_session(workflow, "home:", replica, ttl)

    async def mark_admitted(self, workflow: str, ttl: float) -> None:
        await self._write_session(workflow, "admitted:", 1, ttl)

    async def _write_session(self, workflow: str, kind: str, value: int, ttl: float) -> None:
        now = time.time()  # wall clock: gateways on several hosts share the index
        index = self._p + "sessions"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._p + kind + workflow, value, px=max(1, int(ttl * 1000)))
            pipe.zadd(index, {workflow: now})
            pipe.zremrangebyscore(index, "-inf", now - ttl)  # expired: their keys are gone
            pipe.zcard(index)
            *_, count = await pipe.execute()
        if count > self.max_sessions:
            await self._evict(count - self.max_sessions)

    async def _evict(self, excess: int) -> None:
        """Delete the ``excess`` least recently written sessions (both their keys)."""
        oldest = await self._redis.zpopmin(self._p + "sessions", excess)
        if not oldest:
            return
        keys = [self._p + kind + w for w, _ in oldest for kind in ("home:", "admitted:")]
        await self._redis.delete(*keys)
        self.evicted += len(oldest)

    async def session_count(self) -> int:
        return int(await self._redis.zcard(self._p + "sessions"))

    async def record_call(
        self, tenant: str, agent: str, tool: str | None, tokens: int, latency: float
    ) -> None:
        t = tool or "-"
        graph = self._p + "graph:" + tenant + "/" + agent
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(self._p + "tenant_tokens", tenant, tokens)
            pipe.hincrby(graph, t + ":calls", 1)
            pipe.hincrby(graph, t + ":tokens", tokens)
            pipe.hincrbyfloat(graph, t + ":latency", latency)
            await pipe.execute()

    async def tenant_tokens(self) -> dict[str, float]:
        raw: dict[str, str] = await self._redis.hgetall(self._p + "tenant_tokens")
        return {k: float(v) for k, v in raw.items()}

    async def graph_stats(self, tenant: str, agent: str) -> dict[str, dict[str, float]]:
        raw: dict[str, str] = await self._redis.hgetall(self._p + "graph:" + tenant + "/" + agent)
        out: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            tool, _, name = field.rpartition(":")
            out.setdefault(tool, {})[name] = float(value)
        return out

    async def publish_observations(
        self, source: str, observations: Sequence[Observation]
    ) -> None:
        key = self._p + "graph_log"
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in _chunks(observations):
                rows = json.dumps([o.to_row() for o in chunk], separators=(",", ":"))
                # approximate trimming (~) costs O(1): Redis drops whole macro nodes
                pipe.xadd(key, {"source": source, "rows": rows},
                          maxlen=self._log_length, approximate=True)
            await pipe.execute()

    async def fetch_observations(
        self, source: str, cursor: str, limit: int
    ) -> tuple[str, list[Observation]]:
        # one stream read (RESP2, as the client speaks): [[key, [(id, fields), ...]]] or []
        reply = await self._redis.xread({self._p + "graph_log": cursor}, count=limit)
        if not reply or not reply[0][1]:
            return cursor, []
        entries: list[tuple[str, dict[str, str]]] = reply[0][1]
        out: list[Observation] = []
        for _, fields in entries:
            if fields.get("source") != source:
                out.extend(_decode_rows(fields.get("rows", "")))
        return entries[-1][0], out

    async def close(self) -> None:
        await self._redis.aclose()


def _chunks(observations: Sequence[Observation]) -> Iterator[Sequence[Observation]]:
    for start in range(0, len(observations), ENTRY_OBSERVATIONS):
        yield observations[start:start + ENTRY_OBSERVATIONS]


def _decode_rows(raw: str) -> list[Observation]:
    """The observations of one log entry; what is not one (another version wrote it,
    or anything else) is skipped, so that it cannot stop the log being read."""
    try:
        rows = json.loads(raw)
    except ValueError:
        rows = None
    if not isinstance(rows, list):
        log.warning("graph log entry is not a JSON list of rows: skipped")
        return []
    out: list[Observation] = []
    for row in rows:
        try:
            out.append(Observation.from_row(row))
        except ValueError as error:
            log.warning("graph log: %s: skipped", error)
    return out


def build_store(config: StoreConfig) -> Store:
    if config.kind == "redis":
        return RedisStore(config.url, config.prefix, config.graph_log_length,
                          config.max_sessions, config.socket_timeout, config.connect_timeout,
                          config.max_connections)
    return MemoryStore(max_sessions=config.max_sessions,
                       graph_log_length=config.graph_log_length)
