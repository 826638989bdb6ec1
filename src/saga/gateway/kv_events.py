"""The replicas' real cache state: vLLM's KV cache events, kept as one index per replica.

vLLM publishes what its prefix cache does when started with ``--kv-events-config``
(``{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://HOST:PORT"}``;
vLLM 0.32, ``vllm/distributed/kv_events.py``). Each engine step's events go out as one ZMQ
message of three frames ``(topic, seq, payload)``: ``seq`` an 8-byte big-endian counter
and ``payload`` a msgpack ``[ts, [event, ...], dp_rank]`` whose events are maps tagged by
``type``:

* ``BlockStored``: ``block_hashes`` (a chain, oldest first), ``parent_block_hash`` (the
  block before the first, None at the prompt's start), ``token_ids`` (of all those
  blocks), ``block_size``, ``session_id`` (the request's, which the gateway's vLLM
  backend sets to the workflow id), ``medium``;
* ``BlockRemoved``: ``block_hashes`` evicted (or freed);
* ``AllBlocksCleared``: the prefix cache was reset.

An endpoint without ``*`` makes vLLM *connect* its publisher, so the gateway binds one
SUB socket per replica on loopback (:class:`KVEventSubscriber`) and tells each engine its
port; events are thus attributed to a replica by the socket they arrive on.

:class:`KVIndex` is the exact state: the live blocks, each block's parent (kept after
removal, so a broken chain is seen as broken), each session's deepest block, and a
(parent, tokens) -> block map, so a prompt's token ids match exactly as vLLM's prefix
cache would (:meth:`KVIndex.match_tokens`). The gateway sees prompt text, not token ids;
its view (:mod:`saga.gateway.view`) therefore reads :meth:`KVIndex.session_prefix_blocks`:
the blocks of a workflow's last stored prompt still cached from its start, which is the
cached prefix of the workflow's next prompt when prompts extend one another (agents).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

BlockHash = int | bytes


@dataclass
class KVEventCounters:
    """What an index has received: batches, events by kind, sequence gaps."""

    batches: int = 0
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    missed: int = 0  # batches lost (sequence gaps)
    last_seq: int = -1
    by_type: dict[str, int] = field(default_factory=dict)


class KVIndex:
    """One replica's prefix cache as its KV events tell (see the module doc).

    Thread-safe: a subscriber thread applies events while the gateway's loop reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[BlockHash] = set()
        self._parent: dict[BlockHash, BlockHash | None] = {}
        self._child: dict[tuple[BlockHash | None, tuple[int, ...]], BlockHash] = {}
        self._leaf: dict[str, BlockHash] = {}  # session -> its deepest stored block
        # block -> its place in its chain (1 = a prompt's first block), as stored
        self._depth: dict[BlockHash, int] = {}
        self.counters = KVEventCounters()

    # ---- applying ----------------------------------------------------------------------
    def apply_batch(self, seq: int, events: Iterable[Mapping[str, Any]]) -> None:
        """Apply one published batch (its events in order); count a gap in ``seq``."""
        with self._lock:
            c = self.counters
            if c.last_seq >= 0 and seq > c.last_seq + 1:
                c.missed += seq - c.last_seq - 1
            c.last_seq = max(c.last_seq, seq)
            c.batches += 1
            for event in events:
                self._apply(event)

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type", ""))
        c = self.counters
        c.by_type[kind] = c.by_type.get(kind, 0) + 1
        if kind == "BlockStored":
            if event.get("medium") not in (None, "GPU"):
                return  # another tier's copy: not what the next call hits
            hashes: Sequence[BlockHash] = event["block_hashes"]
            tokens: Sequence[int] = event.get("token_ids") or ()
            size = int(event.get("block_size") or 0)
            parent: BlockHash | None = event.get("parent_block_hash")
            # a parent stored before the index subscribed has no depth: counted from here
            depth = 0 if parent is None else self._depth.get(parent, 0)
            for i, h in enumerate(hashes):
                self._parent[h] = parent
                depth += 1
                self._depth[h] = depth
                if size and len(tokens) >= (i + 1) * size:
                    self._child[(parent, tuple(tokens[i * size:(i + 1) * size]))] = h
                if h not in self._live:
                    self._live.add(h)
                    c.stored += 1
                parent = h
            session = event.get("session_id")
            if session and hashes:
                self._leaf[str(session)] = hashes[-1]
        elif kind == "BlockRemoved":
            if event.get("medium") not in (None, "GPU"):
                return
            for h in event["block_hashes"]:
                if h in self._live:
                    self._live.discard(h)
                    c.removed += 1
        elif kind == "AllBlocksCleared":
            self._live.clear()
            c.cleared += 1

    # ---- reading -----------------------------------------------------------------------
    @property
    def cached_blocks(self) -> int:
        """Blocks the engine holds in its prefix cache now."""
        with self._lock:
            return len(self._live)

    def session_prefix_blocks(self, session: str) -> int:
        """Blocks of ``session``'s deepest stored chain cached from its start (0 if the
        session stored nothing here, or its first block is gone)."""
        with self._lock:
            h = self._leaf.get(session)
            chain: list[BlockHash] = []
            seen: set[BlockHash] = set()
            while h is not None and h not in seen:
                seen.add(h)
                chain.append(h)
                h = self._parent.get(h)
            live = 0
            for block in reversed(chain):
                if block not in self._live:
                    break
                live += 1
            return live

    def session_stored_blocks(self, session: str) -> int:
        """How deep into its chain ``session`` last stored a block (0 if it stored
        nothing here): the full blocks of its prompt (and output) the engine has computed,
        cached now or not. vLLM publishes a step's stores after the step has run, so a
        running call's prefill is over once this reaches its prompt's full blocks."""
        with self._lock:
            h = self._leaf.get(session)
            return 0 if h is None else self._depth.get(h, 0)

    def match_tokens(self, token_ids: Sequence[int], block_size: int) -> int:
        """Full blocks of a prompt (token ids) the engine has cached, from its start."""
        with self._lock:
            parent: BlockHash | None = None
            matched = 0
            for b in range(len(token_ids) // block_size):
                h = self._child.get((parent, tuple(token_ids[b * block_size:(b + 1) * block_size])))
                if h is None or h not in self._live:
                    break
                matched += 1
                parent = h
            return matched


def decode_payload(payload: bytes) -> list[Mapping[str, Any]]:
    """The events of one published batch (msgpack ``[ts, events, dp_rank]``)."""
    import msgspec  # the `gateway-events` extra

    batch = msgspec.msgpack.decode(payload)
    events = batch[1] if isinstance(batch, list) and len(batch) > 1 else []
    return [e for e in events if isinstance(e, dict)]


class KVEventSubscriber:
    """A thread that binds a ZMQ SUB socket at ``endpoint`` (``tcp://127.0.0.1:PORT``; an
    engine's ``--kv-events-config`` endpoint connects to it) and applies every batch to
    ``index``. ``with KVEventSubscriber(...)`` or :meth:`start` / :meth:`stop`."""

    def __init__(self, endpoint: str, index: KVIndex, topic: str = "") -> None:
        import zmq  # the `gateway-events` extra

        self.endpoint = endpoint
        self.index = index
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.setsockopt(zmq.RCVTIMEO, 200)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"kv-events {endpoint}")
        self.errors = 0

    def start(self) -> KVEventSubscriber:
        self._thread.start()
        return self

    def _run(self) -> None:
        import zmq

        while not self._stop.is_set():
            try:
                frames = self._sock.recv_multipart()
            except zmq.Again:
                continue
            except zmq.ZMQError:
                break
            if len(frames) != 3:
                self.errors += 1
                continue
            try:
                events = decode_payload(frames[2])
            except Exception:  # a malformed batch: counted, never fatal to the gateway
                self.errors += 1
                continue
            self.index.apply_batch(int.from_bytes(frames[1], "big"), events)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> KVEventSubscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kv_events_config(endpoint: str) -> str:
    """The ``--kv-events-config`` JSON for an engine publishing to ``endpoint``."""
    import json

    return json.dumps({"enable_kv_cache_events": True, "publisher": "zmq",
                       "endpoint": endpoint})


class _HasEvents(Protocol):
    events: KVIndex | None


def subscribe(views: Sequence[_HasEvents], endpoints: Sequence[str | None]) -> list[
        KVEventSubscriber]:
    """Give each view (``Gateway.views``) an index fed by a subscriber bound at its
    endpoint (None: that replica publishes no events; the view keeps its estimate).
    Returns the started subscribers; stop them when the gateway stops."""
    subscribers = []
    for view, endpoint in zip(views, endpoints, strict=True):
        if endpoint is None:
            continue
        index = KVIndex()
        subscribers.append(KVEventSubscriber(endpoint, index).start())
        view.events = index
    return subscribers
