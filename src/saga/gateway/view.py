"""The gateway's adapter to the scheduler core: a remote replica as a policy sees it.

:class:`RemoteReplicaView` satisfies :class:`saga.sched.view.ReplicaView` from the
gateway's own bookkeeping, and :class:`GatewayCall` (the gateway's record of one call)
satisfies :class:`saga.sched.view.CallView`. The view *is* the gateway's per-backend
queue: a call moves only through its verbs (:meth:`~RemoteReplicaView.try_start`,
:meth:`~RemoteReplicaView.enqueue`, :meth:`~RemoteReplicaView.withdraw`,
:meth:`~RemoteReplicaView.finish`), which keep the concurrency limit, the start-time fair
queue across tenants and the queue token sums in one place. What is exact and what is
approximate:

* ``waiting``: calls this gateway holds for the replica (its concurrency limit was
  reached), in the fair queue's order -- exact for this gateway, blind to other gateways;
* ``running``: calls this gateway sent and whose response has not ended -- the
  replica may still be queueing some of them internally;
* the queue token sums (see :class:`saga.engine.replica.QueueTokens` for their
  definitions): over those two lists; a call's ``computed`` and ``generated`` stay 0
  (the gateway does not see the engine's progress), so the context is 0; a waiting call
  counts its whole prompt, a running one its prompt less the prefix the view matched
  when it was sent (``GatewayCall.cached_tokens``: the engine takes that prefix from its
  cache at admission, as the engine model's ``computed`` starts at the hit), so a call
  that hit its workflow's KV is not counted as the prefill of its whole context; and,
  given the cost model's prefill time (``prefill_time``), :meth:`~RemoteReplicaView.age`
  takes off the share of that prefill the call has had time for since it was sent (the
  gateway sees no progress, but a call sent longer ago than its predicted prefill is
  decoding: it delays a newcomer by its decode steps, not by its prompt);
* ``load()``, ``outstanding_tokens()``: from those two lists, with each call's
  ``max_tokens`` as its output (outstanding work is not decremented as tokens stream);
* ``cached_blocks_for(runs)`` and ``kv``: an LRU index of the block hashes this
  gateway routed to the replica, bounded by the replica's KV capacity. Alone it does not
  see evictions made by the engine for other traffic, nor pins, so it overestimates
  hits under memory pressure; it never invents a prefix that was not sent there. With
  the engine's KV events (``events``, :mod:`saga.gateway.kv_events`) a match is cut to
  what the engine still holds of the workflow that sent those blocks (its cached chain
  from the start, converted from engine tokens to the gateway's estimate by the ratio
  seen on finished calls); ``prefix_lookups`` counts how far the estimate strayed. With
  the gateway's learned token scale (``scale``, :class:`saga.wire.token_scale.TokenScale`:
  ``GatewayConfig.learn_token_scale``) the index reports blocks in the engine's count
  (its text blocks times the scale, so that they compare with the calls' scaled prompt
  tokens and the engine's KV capacity), bounds itself to the text the engine's capacity
  holds, and compares a match with the engine's events as they are;
* ``pins``: the pins the policy asked for (:meth:`~RemoteReplicaView.note_retention`),
  with their expiry on the gateway's clock; a pin goes when the workflow's next call
  starts here, when it is unpinned, or (swept at the next retention decision) when it
  has expired -- what the backend was asked to do, not what it did;
* ``up``: the last health check (or a failed call) said so;
* ``kv.locked_blocks``: what this gateway has the replica hold -- the prompt blocks of
  the calls it has running there plus the blocks of the pins it asked for (blind to
  other gateways and to the engine's own choices); ``anonymous_blocks`` is 0;
* ``host``: a host tier of the preset's host capacity for backends that offload
  (llama.cpp: slot save and restore), else None;
* a call's ``locked_blocks``: 0 while it runs; once it has finished, the full blocks of
  its prompt and output as the engine counted them (``usage.total_tokens`` over the
  block size: vLLM caches the full blocks of both), so that the retention decision
  weighs the KV the finished call really left (:meth:`GatewayCall.served`);
* ``max_num_batched_tokens``: the cluster preset's engine setting (the gateway's model
  of the backend).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saga.engine.kvcache import Run
from saga.gateway.engine_speed import EngineSpeed
from saga.gateway.kv_events import KVIndex
from saga.sched.decisions import Retention
from saga.sched.view import CallInfo
from saga.wire.token_scale import TokenScale


class GatewayCall:
    """The gateway's record of one call to a backend (a policy reads it as a
    :class:`~saga.sched.view.CallView`)."""

    __slots__ = (
        "backlog", "block_tokens", "cached_tokens", "call_id", "enqueued_at", "info",
        "locked_blocks", "output_tokens", "prefill_end", "prefill_seconds", "prompt_tokens",
        "runs", "scheduled_at", "seq", "served_tokens", "slot", "tenant", "workflow",
    )

    #: What the gateway cannot see of the engine's progress: the members a policy reads
    #: of an engine call, fixed here (the engine's business).
    computed = 0
    generated = 0
    preemptions = 0
    lock = None

    def __init__(
        self, info: CallInfo, output_tokens: int, block_tokens: int, seq: int, now: float,
        scale: float = 1.0,
    ) -> None:
        self.info = info
        self.workflow = info.workflow
        self.call_id = info.call_id
        self.tenant = info.tenant
        self.runs = info.runs
        # A prompt is at least as long as its keyed blocks (as the engine model counts; in
        # the engine's tokens: the text blocks times the gateway's learned ``scale``).
        keyed = int(sum(r[2] for r in info.runs) * block_tokens * scale)
        self.prompt_tokens = max(info.prompt_tokens, keyed)
        self.output_tokens = output_tokens  # the call's max_tokens
        self.block_tokens = block_tokens
        #: The engine's prompt plus output tokens once the call has finished (0 before).
        self.served_tokens = 0
        #: The call's KV blocks left in the engine's prefix cache, known once it finished.
        self.locked_blocks = 0
        self.seq = seq
        self.enqueued_at = now
        self.scheduled_at = -1.0  # when it got a slot on the backend
        #: Prompt tokens the view expected cached when the call got its slot (the prefix
        #: the engine takes from its cache instead of prefilling).
        self.cached_tokens = 0
        #: While it runs: the prefill tokens the view counts it for (its uncached prompt,
        #: less what it has had time to prefill), and the predicted seconds of that
        #: prefill when it was sent (inf: not predicted, never aged).
        self.backlog = 0
        self.prefill_seconds = math.inf
        #: When the view predicted (at the cost model's speed) its prefill would end, the
        #: replica prefilling its calls in sending order; set when it gives its slot back.
        self.prefill_end = math.inf
        #: Resolved when a waiting call gets its slot (set by the gateway when it waits).
        self.slot: asyncio.Future[None] | None = None

    @property
    def total_tokens(self) -> int:
        return max(self.prompt_tokens + self.generated, self.served_tokens)

    def served(self, total_tokens: int) -> None:
        """The call finished; the engine counted ``total_tokens`` (prompt plus output,
        ``usage.total_tokens``; 0 when the answer had no usage). Its full blocks are what
        the engine keeps cached of this call (the gateway's prompt estimate without a
        count), and what a retention decision weighs."""
        self.served_tokens = total_tokens
        tokens = total_tokens if total_tokens > 0 else self.prompt_tokens
        self.locked_blocks = tokens // self.block_tokens

    def __repr__(self) -> str:
        return f"GatewayCall({self.workflow}/{self.call_id})"


@dataclass(slots=True)
class RemotePin:
    """A pin the policy asked of a backend, with its expiry on the gateway's clock and
    the blocks it holds."""

    expires: float
    blocks: int = 0


class ApproxPrefixIndex:
    """An LRU set of block names (run keys, one block each) with a block capacity, each
    with the workflow that sent it last (when known)."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        #: Blocks held (not evictable), as the owner of the index counts them.
        self.held = 0
        #: The engine's KV events, when subscribed (saga.gateway.kv_events.KVIndex): a
        #: match is cut to what the engine still holds of the workflow that sent it.
        self.events: KVIndex | None = None
        #: Gateway-estimated tokens per engine token, from finished calls (EWMA).
        self.token_ratio = 1.0
        #: The gateway's learned engine tokens per estimated token (None: off): the index
        #: then counts in engine blocks (see the module doc).
        self.scale: TokenScale | None = None
        #: Matches cut by events: [lookups, blocks the estimate said, blocks kept].
        self.lookups = [0, 0, 0]
        self._blocks: OrderedDict[tuple[str, int], str | None] = OrderedDict()

    def _engine_blocks(self, text_blocks: int) -> int:
        """``text_blocks`` of the gateway's text blocks in engine blocks."""
        if self.scale is None:
            return text_blocks
        return int(text_blocks * self.scale.factor)

    def _bound(self) -> int:
        """Text blocks the index keeps: those the engine's capacity holds."""
        if self.scale is None:
            return self.capacity
        return max(1, int(self.capacity / self.scale.factor))

    @property
    def used_blocks(self) -> int:
        return min(self.capacity, self._engine_blocks(len(self._blocks)))

    @property
    def cached_blocks(self) -> int:
        """Blocks indexed, as the engine's ``KVCache.cached_blocks`` (placement reads it of
        a host tier to skip matching an empty one)."""
        return self.used_blocks

    @property
    def free_blocks(self) -> int:
        return self.capacity - self.used_blocks

    @property
    def available_blocks(self) -> int:
        return self.capacity

    @property
    def locked_blocks(self) -> int:
        """Blocks held by running calls and pins, as the owner counts them (at most the
        capacity)."""
        return min(self.held, self.capacity)

    @property
    def anonymous_blocks(self) -> int:
        return 0

    def match_blocks(self, runs: Sequence[Run], *, record: bool = True) -> int:
        """Blocks of ``runs``' prefix that were sent to this replica and not aged out (and,
        with events, that the engine still holds). ``record``: count the lookup in
        :attr:`lookups` (the placement's lookups are; the view's own are not)."""
        text_blocks = self._estimate(runs)
        estimate = self._engine_blocks(text_blocks)
        if self.events is None or estimate == 0:
            return estimate
        owner = self.owner(runs, text_blocks - 1)
        if owner is None:
            return estimate
        held = self.from_engine(self.events.session_prefix_blocks(owner))
        matched = min(estimate, held)
        if record:
            stats = self.lookups
            stats[0] += 1
            stats[1] += estimate
            stats[2] += matched
        return matched

    def from_engine(self, engine_blocks: int) -> int:
        """``engine_blocks`` (as the engine's KV events count them) in the blocks this
        index reports: the engine's own with a learned scale, else converted to the
        gateway's estimate by the ratio seen on finished calls."""
        if self.scale is not None:
            return engine_blocks
        return int(engine_blocks * self.token_ratio)

    def _estimate(self, runs: Sequence[Run]) -> int:
        blocks = self._blocks
        matched = 0
        for namespace, first, count in runs:
            for i in range(first, first + count):
                if (namespace, i) not in blocks:
                    return matched
                matched += 1
        return matched

    def add(self, runs: Sequence[Run], owner: str | None = None) -> None:
        """Record ``runs`` as cached, most recently used (sent by ``owner`` if given);
        age out the oldest."""
        blocks = self._blocks
        for namespace, first, count in runs:
            for i in range(first, first + count):
                key = (namespace, i)
                if key in blocks:
                    blocks.move_to_end(key)
                    if owner is not None:
                        blocks[key] = owner
                else:
                    blocks[key] = owner
        bound = self._bound()
        while len(blocks) > bound:
            blocks.popitem(last=False)

    def owner(self, runs: Sequence[Run], block: int) -> str | None:
        """The workflow that last sent block number ``block`` (0-based) of ``runs``."""
        for namespace, first, count in runs:
            if block < count:
                return self._blocks.get((namespace, first + block))
            block -= count
        return None


class RemoteReplicaView:
    """A backend as a policy sees it, and the gateway's queue of calls for it."""

    def __init__(
        self, index: int, capacity_blocks: int, block_tokens: int, block_bytes: int = 0,
        host_blocks: int | None = None, *, max_concurrency: int = 64,
        max_num_batched_tokens: int = 8192,
        prefill_time: Callable[[int, int], float] | None = None,
        decode_time: Callable[[int, int], float] | None = None,
        speed: EngineSpeed | None = None, slots: int | None = None,
    ) -> None:
        self.index = index
        #: Sequences whose KV the backend keeps between calls (llama.cpp's slots, as the
        #: operator set ``--parallel``), None when only its memory bounds them.
        self.slots = slots
        #: Predicted seconds to prefill a prompt of N tokens with M cached (the cluster
        #: preset's cost model), for :meth:`age`; None: running calls are not aged.
        self.prefill_time = prefill_time
        #: Predicted seconds to decode M tokens after a prompt of N, alone (the cost
        #: model), and the engines' learned speed over the cost model's
        #: (saga.gateway.engine_speed), which :meth:`age` stretches the prefills by and
        #: :meth:`learn_speed` feeds; None: the cost model's speed as it is.
        self.decode_time = decode_time
        self.speed = speed
        self.up = True
        self.block_tokens = block_tokens
        self.block_bytes = block_bytes
        self.max_num_batched_tokens = max_num_batched_tokens
        #: Calls the backend is sent at once; the rest wait here, fairly.
        self.max_concurrency = max_concurrency
        #: The host tier, for backends that have one (llama.cpp's slot files): what the
        #: policy may offload to; its contents are not tracked (nothing matches there).
        self.host = ApproxPrefixIndex(host_blocks) if host_blocks is not None else None
        self.kv = ApproxPrefixIndex(capacity_blocks)
        self.running: list[GatewayCall] = []
        # the fair queue: (start tag, seq, call), a heap
        self._queue: list[tuple[float, int, GatewayCall]] = []
        self._vtime = 0.0  # the start tag of the call last given a slot
        self._tenant_tag: dict[str, float] = {}  # tenant -> finish tag of its last call
        self.context_tokens = self.demand_tokens = self.backlog_tokens = 0
        self.pins: dict[str, RemotePin] = {}  # workflow -> the pin asked of the backend

    # ---- what a policy reads ----------------------------------------------------------
    @property
    def waiting(self) -> list[GatewayCall]:
        """The calls waiting for a slot, first served first."""
        return [call for _, _, call in sorted(self._queue)]

    def load(self) -> int:
        return len(self._queue) + len(self.running)

    def outstanding_tokens(self) -> int:
        calls = [c for _, _, c in self._queue] + self.running
        return sum(c.prompt_tokens + c.output_tokens for c in calls)

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        return self.kv.match_blocks(runs)

    def use_token_scale(self, scale: TokenScale) -> None:
        """Count blocks in the engine's tokens by the gateway's learned ``scale`` (both
        tiers; see the module doc)."""
        self.kv.scale = scale
        if self.host is not None:
            self.host.scale = scale

    @property
    def events(self) -> KVIndex | None:
        """The engine's KV events (saga.gateway.kv_events.KVIndex), when subscribed."""
        return self.kv.events

    @events.setter
    def events(self, index: KVIndex | None) -> None:
        self.kv.events = index

    @property
    def prefix_lookups(self) -> list[int]:
        """Prefix matches cut by events: [lookups, blocks the estimate said, kept]."""
        return self.kv.lookups

    def unpin(self, workflow: str, now: float) -> bool:
        """Forget a pin the policy asked for (the backend lets it lapse)."""
        return self._unpin(workflow)

    # ---- the gateway's verbs: a call moves only through these -------------------------
    def try_start(self, call: GatewayCall, now: float) -> bool:
        """Give ``call`` a slot now if one is free and nobody waits; else False."""
        if self._queue or len(self.running) >= self.max_concurrency:
            return False
        self._start(call, now)
        return True

    def enqueue(self, call: GatewayCall, weight: float) -> None:
        """Queue ``call`` for a slot. Start-time fair queueing: a tenant's calls are
        spaced by their cost (prompt plus max_tokens) over the tenant's weight."""
        start = max(self._vtime, self._tenant_tag.get(call.tenant, 0.0))
        self._tenant_tag[call.tenant] = start + (call.prompt_tokens + call.output_tokens) / weight
        heapq.heappush(self._queue, (start, call.seq, call))
        self._count_waiting(call, 1)

    def withdraw(self, call: GatewayCall) -> bool:
        """Take a waiting call off the queue (its client left); False if not waiting."""
        for i, (_, _, queued) in enumerate(self._queue):
            if queued is call:
                self._queue[i] = self._queue[-1]
                self._queue.pop()
                heapq.heapify(self._queue)
                self._count_waiting(call, -1)
                return True
        return False

    def finish(
        self, call: GatewayCall, now: float, startable: Callable[[GatewayCall], bool],
        order: Callable[[GatewayCall], tuple[float, ...]] | None = None,
    ) -> list[GatewayCall]:
        """``call`` gave its slot back: start waiting calls, fair order, while slots are
        free; return them. A waiting call for which ``startable`` is false (its client is
        leaving) is dropped from the queue instead. With ``order`` (a policy's queue key,
        lower first: for an engine that takes no priority, the gateway's queue is where
        the policy's order applies), the tenant whose turn it is starts its waiting call
        of the lowest key rather than its oldest (:meth:`_lowest_first`)."""
        if self.speed is not None:  # only learn_speed reads it
            call.prefill_end = self._prefills().get(id(call), (0.0, math.inf))[1]
        self.running.remove(call)
        self._count_running(call, -1)
        started = []
        while self._queue and len(self.running) < self.max_concurrency:
            if order is not None:
                self._lowest_first(order)
            tag, _, waiter = heapq.heappop(self._queue)
            self._count_waiting(waiter, -1)
            if not startable(waiter):
                continue
            self._vtime = tag
            self._start(waiter, now)
            started.append(waiter)
        return started

    def _lowest_first(self, order: Callable[[GatewayCall], tuple[float, ...]]) -> None:
        """Put the lowest-keyed waiting call of the head's tenant at the head. The fair
        queue's tags stay where they are (each tenant keeps its turns, so fairness across
        tenants is unchanged); within a tenant the calls trade places, the one moved
        forward handing its later turn to the head's call. Keys are read now, as the
        policy's estimates stand when the slot frees."""
        head_tag, head_seq, head = self._queue[0]
        best, best_key = 0, order(head)
        for i, (_, _, queued) in enumerate(self._queue):
            if i and queued.tenant == head.tenant:
                key = order(queued)
                if key < best_key:
                    best, best_key = i, key
        if best:
            tag, seq, chosen = self._queue[best]
            self._queue[0] = (head_tag, head_seq, chosen)
            self._queue[best] = (tag, seq, head)

    def note_retention(
        self, workflow: str, decision: Retention, now: float, call: GatewayCall | None = None,
    ) -> None:
        """Record the policy's retention decision for ``workflow``'s KV (``call``: the
        finished call it is about, whose blocks a pin holds) here."""
        blocks = 0
        if call is not None:
            blocks = call.locked_blocks
            if call.served_tokens > 0:  # learn the gateway's estimate against the engine
                ratio = (call.prompt_tokens + call.output_tokens) / call.served_tokens
                self.kv.token_ratio += 0.2 * (ratio - self.kv.token_ratio)
        for expired in [w for w, pin in self.pins.items() if pin.expires <= now]:
            self._unpin(expired)
        self._unpin(workflow)
        if decision.kind == "pin":
            self.pins[workflow] = RemotePin(now + decision.ttl, blocks)
            self.kv.held += blocks

    def _unpin(self, workflow: str) -> bool:
        pin = self.pins.pop(workflow, None)
        if pin is None:
            return False
        self.kv.held -= pin.blocks
        return True

    def _prefills(self, stretch: float = 1.0) -> dict[int, tuple[float, float]]:
        """Per running call (by id) when its prefill starts and ends, the replica
        prefilling its calls one after another in the order they were sent, each
        ``stretch`` times its predicted time."""
        spans: dict[int, tuple[float, float]] = {}
        free_at = -math.inf  # when the replica is done with the prefills sent before
        for call in self.running:  # in the order they got their slots
            if math.isfinite(call.prefill_seconds):
                start = max(free_at, call.scheduled_at)
                free_at = start + call.prefill_seconds * stretch
                spans[id(call)] = (start, free_at)
        return spans

    def learn_speed(self, call: GatewayCall, now: float, prompt: int, output: int) -> None:
        """``call`` was answered at ``now``; the engine counted ``prompt`` and ``output``
        tokens (0: no usage, no sample): its time from its slot against the view's
        prediction (its prefill in the sending order, at the cost model's speed, then its
        decode alone) is a sample of the engines' speed."""
        if (self.speed is None or self.decode_time is None or output <= 0
                or not math.isfinite(call.prefill_end)):
            return
        predicted = call.prefill_end - call.scheduled_at + self.decode_time(prompt, output)
        self.speed.observe(predicted, now - call.scheduled_at)

    def age(self, now: float) -> None:
        """Take off each running call's backlog the share of its predicted prefill that
        the time since it was sent covers, the replica prefilling its calls one after
        another in the order they were sent, each at the engines' learned speed (a
        placement calls this first). With the engine's KV events, never below the part
        of its prompt the engine has not yet published as stored (:meth:`_unstored`):
        an engine running slower than predicted is seen still prefilling."""
        if self.prefill_time is None:
            return
        stretch = self.speed.factor if self.speed is not None else 1.0
        spans = self._prefills(stretch)
        events = self.kv.events
        for call in self.running:
            if call.backlog <= 0 or id(call) not in spans:
                continue
            start = spans[id(call)][0]
            uncached = max(0, call.prompt_tokens - call.cached_tokens - 1)
            done = (now - start) / max(call.prefill_seconds * stretch, 1e-9)
            left = min(call.backlog, math.ceil(uncached * max(0.0, 1.0 - done)))
            if events is not None and left < call.backlog:
                left = min(call.backlog, max(left, self._unstored(call, events)))
            self.backlog_tokens -= call.backlog - left
            call.backlog = left

    def _unstored(self, call: GatewayCall, events: KVIndex) -> int:
        """Tokens of the full blocks of running ``call``'s prompt past those its workflow
        has stored on the engine (:meth:`KVIndex.session_stored_blocks`, in the view's
        blocks: :meth:`ApproxPrefixIndex.from_engine`): vLLM publishes
        the blocks a step computed once the step has run, so a prefill whose full blocks
        are not all stored is still running there, however long ago it was sent (its
        last, partial block is never published)."""
        stored = self.kv.from_engine(events.session_stored_blocks(call.workflow))
        bt = self.block_tokens
        return max(0, call.prompt_tokens // bt - stored) * bt

    def _start(self, call: GatewayCall, now: float) -> None:
        call.scheduled_at = now
        cached = self.kv.match_blocks(call.runs, record=False) * self.block_tokens
        call.cached_tokens = min(cached, call.prompt_tokens)
        call.backlog = max(0, call.prompt_tokens - call.cached_tokens - 1)
        if self.prefill_time is not None:
            call.prefill_seconds = self.prefill_time(call.prompt_tokens, call.cached_tokens)
        self.kv.add(call.runs, call.workflow)  # sent there now, by this workflow
        self.running.append(call)
        self._count_running(call, 1)
        self._unpin(call.workflow)  # the next call uses the pinned KV (its blocks now)

    # ---- the queue token sums (computed and generated stay 0 at the gateway) ----------
    def _count_running(self, call: GatewayCall, sign: int) -> None:
        # the prefill still ahead of it: its prompt less the prefix it found cached (and
        # less what it has had time for: age)
        self.backlog_tokens += sign * call.backlog
        self.kv.held += sign * -(-call.prompt_tokens // self.block_tokens)

    def _count_waiting(self, call: GatewayCall, sign: int) -> None:
        self.demand_tokens += sign * call.prompt_tokens
        self.backlog_tokens += sign * call.prompt_tokens

    def check_queue_tokens(self) -> None:
        """Assert that the sums equal a count from scratch (for tests)."""
        waiting = [c for _, _, c in self._queue]
        demand = sum(c.prompt_tokens for c in waiting)
        assert all(0 <= c.backlog <= max(0, c.prompt_tokens - c.cached_tokens - 1)
                   for c in self.running)
        backlog = sum(c.backlog for c in self.running) + demand
        kept = (self.context_tokens, self.demand_tokens, self.backlog_tokens)
        assert kept == (0, demand, backlog), (kept, (0, demand, backlog))
        held = sum(-(-c.prompt_tokens // self.block_tokens) for c in self.running) + sum(
            p.blocks for p in self.pins.values())
        assert self.kv.held == held, (self.kv.held, held)
