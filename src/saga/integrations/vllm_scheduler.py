"""SAGA inside vLLM: a V1 scheduler class with Agent Fair Share and tool-aware KV retention.

Load it with ``--scheduler-cls saga.integrations.vllm_scheduler.SagaScheduler`` (and the
checkout on vLLM's ``PYTHONPATH``: :func:`saga.integrations.engines.start_vllm` with
``saga_scheduler=True`` does both; docs/engines.md, "SAGA inside vLLM"). It is vLLM's own
scheduler with three things changed, each made by SAGA's scheduler core
(:mod:`saga.sched.saga`):

* **queue order** (Agent Fair Share, :mod:`~saga.sched.saga.fairshare`): the waiting queue
  is a :class:`KeyedQueue` ordered by ``FairShare.key``: the tenant's normalized service
  first, then the workflow's expected remaining work minus the aging credit, then arrival.
  Service is charged from what vLLM actually computed: each step's measured time, split
  between the requests in it by their scheduled tokens.
* **retention** (:mod:`~saga.sched.saga.retention`): when a request of a workflow
  finishes, its KV blocks are kept referenced (not in the free queue, so never evicted)
  for a TTL, when the request says so (``saga_ttl``) or, without a hint, when the core's
  ``retention.decide`` picks ``pin`` from the workflow's learned Agent Execution Graph
  (:mod:`~saga.sched.saga.graph`) and the engine's memory state. A pin is released when
  the workflow's next request is admitted (after it took its prefix hit), when its TTL
  expires, or under memory pressure (an allocation fails: least valuable pin first, by
  the core's next-use order).
* **observations**: per workflow the call sites, tool gaps, prompt growth and output
  lengths feed the graph, as in the gateway.

Per-request hints come in ``vllm_xargs`` (``SamplingParams.extra_args``), see
:func:`parse_hints`: ``saga_workflow``, ``saga_tenant``, ``saga_agent``, ``saga_tool``
(the tool that ran before this call), ``saga_end`` (the workflow's last call) and
``saga_ttl`` (seconds to keep the KV after this call; 0 releases it at once).

Configuration: environment variable ``SAGA_VLLM_SCHEDULER`` holding the JSON of a
:class:`VLLMSchedulerConfig` (tenant weights, TTL cap, ... under ``"saga"``).
Counters (pins, pinned blocks, releases by return, expiry and pressure, decisions, the
tenants' normalized service) go to vLLM's log as ``saga-stats {json}`` lines.

The module imports vLLM only when :data:`SagaScheduler` is first looked up, so its pure
parts (hints, :class:`KeyedQueue`, :class:`PinTable`, :class:`SagaCore`) load and are
tested without vLLM.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from saga.sched.decisions import DROP, RELEASE, Retention
from saga.sched.saga import retention as keep
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.fairshare import FairShare
from saga.sched.saga.graph import AgentGraph, GraphStore, node_key

__all__ = [
    "CONFIG_ENV",
    "SCHEDULER_CLS",
    "STATS_MARKER",
    "Finish",
    "Flow",
    "Hints",
    "KeyedQueue",
    "Pin",
    "PinTable",
    "SagaCore",
    "VLLMSchedulerConfig",
    "load_config",
    "parse_hints",
    "parse_stats",
]

#: What to pass to vLLM's ``--scheduler-cls``.
SCHEDULER_CLS = "saga.integrations.vllm_scheduler.SagaScheduler"
#: Environment variable with the JSON of a :class:`VLLMSchedulerConfig`.
CONFIG_ENV = "SAGA_VLLM_SCHEDULER"
#: Prefix of the counter lines in vLLM's log (the JSON follows on the same line).
STATS_MARKER = "saga-stats "

log = logging.getLogger("vllm.saga_scheduler")  # vLLM's handler and level


class VLLMSchedulerConfig(BaseModel):
    """Configuration of :data:`SagaScheduler` (environment variable ``SAGA_VLLM_SCHEDULER``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    saga: SagaConfig = Field(
        default_factory=SagaConfig,
        description="SAGA's core configuration: tenant weights, aging, retention prices, "
        "TTL cap (ttl_max), graph priors. The switches afs and retention turn the two "
        "mechanisms off (vLLM's own order and LRU).",
    )
    idle_timeout: float = Field(
        300.0, gt=0.0,
        description="Seconds without a request after which a workflow that never sent "
        "saga_end counts as ended (its tenant may go idle; its graph sees the end).",
    )
    stats_interval: float = Field(
        10.0, ge=0.0,
        description="Least seconds between two saga-stats log lines (0: a line on every "
        "change of the counters).",
    )
    t_token: float = Field(
        1e-4, gt=0.0,
        description="Initial estimate of seconds per prefill token, until steps are measured.",
    )
    t_decode: float = Field(
        0.02, gt=0.0,
        description="Initial estimate of seconds per decode step, until steps are measured.",
    )
    smoothing: float = Field(
        0.1, gt=0.0, le=1.0,
        description="Weight of a new measurement in the moving averages of step times.",
    )


def load_config(environ: Mapping[str, str] | None = None) -> VLLMSchedulerConfig:
    """The configuration in ``SAGA_VLLM_SCHEDULER`` (JSON), else the defaults."""
    raw = (os.environ if environ is None else environ).get(CONFIG_ENV, "").strip()
    return VLLMSchedulerConfig.model_validate_json(raw) if raw else VLLMSchedulerConfig()


# ---- hints -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hints:
    """What a request says about itself in ``vllm_xargs`` (all optional)."""

    workflow: str | None = None
    tenant: str = "default"
    agent: str = "default"
    tool: str | None = None
    end: bool = False
    ttl: float | None = None


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_hints(extra: Mapping[str, Any] | None) -> Hints:
    """Hints from a request's extra arguments; malformed values count as absent."""
    if not extra:
        return Hints()
    ttl: float | None = None
    raw = extra.get("saga_ttl")
    if raw is not None and not isinstance(raw, bool):
        try:
            ttl = float(raw)
        except (TypeError, ValueError):
            ttl = None
        if ttl is not None and not math.isfinite(ttl):
            ttl = None
    return Hints(
        workflow=_text(extra.get("saga_workflow")),
        tenant=_text(extra.get("saga_tenant")) or "default",
        agent=_text(extra.get("saga_agent")) or "default",
        tool=_text(extra.get("saga_tool")),
        end=_flag(extra.get("saga_end", False)),
        ttl=None if ttl is None else max(ttl, 0.0),
    )


# ---- the waiting queue ---------------------------------------------------------------------
T = TypeVar("T")


class KeyedQueue(Generic[T]):
    """vLLM's ``RequestQueue`` verbs over a list kept in the order of a key function.

    Keys may change over time (a tenant's service grows, waiting ages a request), so the
    order is computed by :meth:`refresh` (the scheduler calls it once per step) and kept
    until the queue changes; within a step peek and pop agree. Prepending adds by key:
    there is no front in a keyed queue (as in vLLM's ``PriorityRequestQueue``).
    """

    def __init__(self, key: Callable[[T], tuple[Any, ...]]) -> None:
        self._key = key
        self._items: list[T] = []
        self._sorted = True

    def refresh(self) -> None:
        """Recompute every key (they may have changed since the last step)."""
        self._items.sort(key=self._key)
        self._sorted = True

    def _ordered(self) -> list[T]:
        if not self._sorted:
            self.refresh()
        return self._items

    def add_request(self, request: T) -> None:
        self._items.append(request)
        self._sorted = False

    def pop_request(self) -> T:
        if not self._items:
            raise IndexError("pop from an empty queue")
        return self._ordered().pop(0)

    def peek_request(self) -> T:
        if not self._items:
            raise IndexError("peek from an empty queue")
        return self._ordered()[0]

    def prepend_request(self, request: T) -> None:
        self.add_request(request)

    def prepend_requests(self, requests: Iterable[T]) -> None:
        for request in requests:
            self.add_request(request)

    def remove_request(self, request: T) -> None:
        self._items.remove(request)

    def remove_requests(self, requests: Iterable[T]) -> None:
        gone = requests if isinstance(requests, set) else set(requests)
        self._items = [r for r in self._items if r not in gone]

    def items(self) -> list[T]:
        """The requests in no particular order (no keys computed)."""
        return list(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._ordered()))


# ---- pins ----------------------------------------------------------------------------------
B = TypeVar("B")

RELEASE_REASONS = ("return", "expiry", "pressure", "reset")


@dataclass(slots=True)
class Pin(Generic[B]):
    """KV blocks of one finished request, kept referenced for its workflow."""

    workflow: str
    blocks: list[B]
    created: float
    expires: float
    p_return: float  # chance the workflow calls again (the graph's)
    next_use: float  # predicted time of its next call


class PinTable(Generic[B]):
    """Pinned blocks by workflow, on an injected clock; ``free`` gives blocks back to the
    engine's pool (for vLLM: the block pool's ``free_blocks``, tail block first).

    Pressure releases the least valuable pin first. A pin's value is SAGA's next-use
    eviction key (:meth:`SagaPolicy._eviction_key`): the chance its workflow returns over
    the time until the predicted return plus ``t0``; a workflow with a request waiting is
    about to return (value ``1 / t0``). Ties go to the oldest pin.
    """

    def __init__(self, free: Callable[[list[B]], None], t0: float = 1.0) -> None:
        self._free = free
        self.t0 = t0
        self.pins: dict[str, list[Pin[B]]] = {}
        self.pinned_blocks = 0
        self.counters: dict[str, int] = {
            "pins": 0, **{f"released_{r}": 0 for r in RELEASE_REASONS},
            **{f"released_blocks_{r}": 0 for r in RELEASE_REASONS},
        }

    def __len__(self) -> int:
        return sum(len(p) for p in self.pins.values())

    def pin(
        self, workflow: str, blocks: list[B], now: float, ttl: float, p_return: float = 1.0,
        next_use: float | None = None,
    ) -> Pin[B]:
        pin = Pin(workflow, list(blocks), now, now + ttl, p_return,
                  now + ttl if next_use is None else next_use)
        self.pins.setdefault(workflow, []).append(pin)
        self.pinned_blocks += len(pin.blocks)
        self.counters["pins"] += 1
        return pin

    def holds(self, workflow: str) -> bool:
        return workflow in self.pins

    def _drop(self, pin: Pin[B], reason: str) -> int:
        pins = self.pins[pin.workflow]
        pins.remove(pin)
        if not pins:
            del self.pins[pin.workflow]
        self.pinned_blocks -= len(pin.blocks)
        self.counters[f"released_{reason}"] += 1
        self.counters[f"released_blocks_{reason}"] += len(pin.blocks)
        self._free(pin.blocks)
        return len(pin.blocks)

    def release(self, workflow: str, reason: str) -> int:
        """Release every pin of ``workflow``; the number of blocks given back."""
        return sum(self._drop(p, reason) for p in list(self.pins.get(workflow, ())))

    def release_all(self, reason: str) -> int:
        return sum(self.release(w, reason) for w in list(self.pins))

    def expire(self, now: float, waiting: set[str] | frozenset[str] = frozenset()) -> int:
        """Release the pins whose TTL has passed, except those of workflows with a request
        waiting (about to use them; pressure may still take them)."""
        out = 0
        for pins in list(self.pins.values()):
            for pin in list(pins):
                if pin.expires <= now and pin.workflow not in waiting:
                    out += self._drop(pin, "expiry")
        return out

    def value(self, pin: Pin[B], now: float, waiting: set[str] | frozenset[str]) -> float:
        if pin.workflow in waiting:
            return 1.0 / self.t0
        return pin.p_return / (max(pin.next_use - now, 0.0) + self.t0)

    def victims(
        self, now: float, waiting: set[str] | frozenset[str] = frozenset(),
        spare: str | None = None,
    ) -> list[Pin[B]]:
        """Pins in the order pressure releases them: ``spare``'s (the workflow asking for
        memory) last, then by value, then oldest first."""
        pins = [p for ps in self.pins.values() for p in ps]
        return sorted(pins, key=lambda p: (p.workflow == spare, self.value(p, now, waiting),
                                           p.created, p.workflow))

    def relieve(
        self, now: float, waiting: set[str] | frozenset[str] = frozenset(),
        spare: str | None = None,
    ) -> int:
        """Release the least valuable pin for memory; the blocks freed (0: none left)."""
        order = self.victims(now, waiting, spare)
        return self._drop(order[0], "pressure") if order else 0


# ---- SAGA's core, as the engine sees it ------------------------------------------------------
@dataclass(slots=True)
class Flow:
    """What the scheduler remembers of one workflow (or of one anonymous request)."""

    workflow: str
    tenant: str
    agent: str
    anonymous: bool = False
    node: str = ""
    calls: int = 0
    in_flight: int = 0
    last_finish: float | None = None
    last_prompt: int = 0
    last_seen: float = 0.0
    rest_prefill: float = 0.0  # expected prompt tokens still to come after this call
    rest_decode: float = 0.0  # expected output tokens still to come after this call
    p_return: float = 0.0
    next_use: float = 0.0
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """A finished request as retention sees it."""

    prompt_tokens: int
    output_tokens: int
    blocks: int  # KV blocks it holds
    completed: bool  # stopped or hit its length (not aborted or failed)


@dataclass(slots=True)
class StepTimes:
    """Moving averages of measured step times: seconds per prefill token, per decode step."""

    t_token: float
    t_decode: float
    smoothing: float
    steps: int = 0

    def observe(self, seconds: float, tokens: int, decode_only: bool) -> None:
        if seconds <= 0 or tokens <= 0:
            return
        a = self.smoothing
        self.steps += 1
        if decode_only:
            self.t_decode += a * (seconds - self.t_decode)
        else:
            self.t_token += a * (seconds / tokens - self.t_token)


class SagaCore:
    """SAGA's fair share, execution graphs and retention for one vLLM engine.

    Pure bookkeeping on an injected clock (the runtime passes ``now``): the vLLM scheduler
    calls :meth:`arrive`, :meth:`finish`, :meth:`key`, :meth:`charge` and
    :meth:`observe_step`, and carries out what :meth:`finish` returns.
    """

    def __init__(self, config: VLLMSchedulerConfig) -> None:
        self.config = config
        self.saga = config.saga
        self.fair = FairShare(self.saga)
        self.graphs = GraphStore(self.saga)
        self.flows: dict[str, Flow] = {}
        self.times = StepTimes(config.t_token, config.t_decode, config.smoothing)
        self.decisions: dict[str, int] = {"pin": 0, "release": 0, "drop": 0, "offload": 0}
        self.hinted = 0

    def _graph(self, flow: Flow) -> AgentGraph:
        return self.graphs.get(flow.agent)

    def arrive(self, hints: Hints, request_id: str, prompt_tokens: int, now: float) -> Flow:
        """A request arrived: its workflow's flow (made and its tenant activated on first
        sight; anonymous requests get one of their own), with the graph told of the call."""
        anonymous = hints.workflow is None
        name = f"req:{request_id}" if anonymous else str(hints.workflow)
        flow = self.flows.get(name)
        if flow is None:
            flow = self.flows[name] = Flow(name, hints.tenant, hints.agent, anonymous)
            self.fair.activate(flow.tenant)
        graph = self._graph(flow)
        node = node_key(hints.tool, flow.calls, self.saga.depth_buckets)
        if flow.last_finish is not None and flow.in_flight == 0 and self.graphs.learning:
            graph.observe_transition(flow.node, node, max(now - flow.last_finish, 0.0),
                                     prompt_tokens - flow.last_prompt)
        flow.node = node
        flow.calls += 1
        flow.in_flight += 1
        flow.last_seen = now
        calls_left, _ = graph.remaining(node)
        flow.rest_prefill = calls_left * graph.growth_tokens(node)
        flow.rest_decode = calls_left * graph.output_tokens(node)
        return flow

    def key(self, flow: Flow, own_work: float, waited: float) -> tuple[float, float]:
        """Agent Fair Share's queue key of a request: (tenant's normalized service, the
        workflow's remaining work in seconds minus the aging credit). ``own_work`` is the
        request's own (:meth:`own_work`); the rest of the workflow is the graph's, priced
        at the same measured step times."""
        rest = self.own_work(flow.rest_prefill, flow.rest_decode)
        return self.fair.key(flow.tenant, rest + own_work, waited)

    def own_work(self, prompt_left: float, output_left: float) -> float:
        """Seconds of work: prompt tokens to prefill plus decode steps, at the measured
        step times."""
        return max(prompt_left, 0) * self.times.t_token + max(output_left, 0) * self.times.t_decode

    def charge(self, tenant: str, seconds: float) -> None:
        self.fair.charge(tenant, seconds)

    def observe_step(self, seconds: float, tokens: int, decode_only: bool) -> None:
        self.times.observe(seconds, tokens, decode_only)

    def finish(
        self, flow: Flow, hints: Hints, done: Finish, memory: keep.MemoryState, now: float
    ) -> Retention:
        """A request finished: update the flow and the graph, and decide what becomes of
        its KV. ``pin`` (with its TTL) is the only decision the engine acts on; the others
        leave vLLM's LRU in charge."""
        flow.in_flight = max(flow.in_flight - 1, 0)
        flow.last_finish = now
        flow.last_seen = now
        flow.last_prompt = done.prompt_tokens
        graph = self._graph(flow)
        if self.graphs.learning and done.completed:
            graph.observe_output(flow.node, done.output_tokens)
        gap = graph.gap(flow.node)
        flow.p_return = gap.p_continue
        flow.next_use = now + gap.mean()
        if flow.anonymous or hints.end:
            self.end(flow)
            return self._count(DROP if hints.end else RELEASE)
        if not done.completed or not self.saga.retention:
            return self._count(RELEASE)
        if hints.ttl is not None:
            self.hinted += 1
            ttl = min(hints.ttl, self.saga.ttl_max)
            return self._count(Retention("pin", ttl=ttl) if ttl > 0 else RELEASE)
        decision = keep.decide(keep.RetentionInput(
            now=now, ends=False, gap=gap, blocks=done.blocks,
            recompute=(done.prompt_tokens + done.output_tokens) * self.times.t_token,
            reload=None, memory=memory,
        ), self.saga)
        return self._count(decision)

    def _count(self, decision: Retention) -> Retention:
        self.decisions[decision.kind] += 1
        return decision

    def end(self, flow: Flow) -> None:
        """The workflow is over: the graph sees its end, its tenant may go idle."""
        if flow.ended:
            return
        flow.ended = True
        self.flows.pop(flow.workflow, None)
        if not flow.anonymous and self.graphs.learning and flow.node:
            self._graph(flow).observe_end(flow.node)
        self.fair.deactivate(flow.tenant)

    def sweep(self, now: float) -> list[Flow]:
        """End the workflows idle for longer than ``idle_timeout``; they are returned."""
        limit = self.config.idle_timeout
        idle = [f for f in self.flows.values()
                if f.in_flight == 0 and now - f.last_seen > limit]
        for flow in idle:
            self.end(flow)
        return idle

    def stats(self) -> dict[str, Any]:
        return {
            "decisions": dict(self.decisions),
            "hinted": self.hinted,
            "workflows": sum(1 for f in self.flows.values() if not f.anonymous),
            "service": {t: round(a.normalized, 6) for t, a in sorted(self.fair.tenants.items())},
            "t_token": self.times.t_token,
            "t_decode": self.times.t_decode,
        }


def parse_stats(log_text: str) -> dict[str, Any] | None:
    """The last ``saga-stats`` line's counters in a vLLM log, or None."""
    for line in reversed(log_text.splitlines()):
        at = line.find(STATS_MARKER)
        if at >= 0:
            try:
                stats: dict[str, Any] = json.loads(line[at + len(STATS_MARKER):])
            except ValueError:
                continue
            return stats
    return None


# ---- the vLLM scheduler class (built on first use, inside vLLM's process) ------------------
@dataclass(slots=True)
class _Tracked:
    flow: Flow
    hints: Hints


@dataclass(slots=True)
class _Step:
    started: float
    tokens: dict[str, int] = field(default_factory=dict)  # tenant -> scheduled tokens
    decode_only: bool = True


def _build_scheduler_class() -> type[Any]:
    """Define ``SagaScheduler`` on top of vLLM's V1 ``Scheduler`` (imports vLLM)."""
    from vllm.v1.core.sched.scheduler import (  # type: ignore[import-not-found,unused-ignore]
        Scheduler,
    )
    from vllm.v1.request import (  # type: ignore[import-not-found,unused-ignore]
        RequestStatus,
    )

    completed = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)
    admitting = (RequestStatus.WAITING, RequestStatus.PREEMPTED)

    class SagaScheduler(Scheduler):  # type: ignore[misc,valid-type,unused-ignore]
        """vLLM's V1 scheduler with SAGA's queue order and KV retention (module docstring).

        Overrides: ``add_request`` (hints, flow, pin expiry), ``schedule`` (expiry, queue
        refresh, the step's tokens per tenant), ``update_from_output`` (the step's measured
        time charged to tenants), ``_free_request`` (the retention decision),
        ``_free_request_blocks`` (pin instead of free), ``reset_prefix_cache`` (pins go
        first); the KV manager's ``allocate_slots`` is wrapped to release pins on pressure
        and on a workflow's return.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.saga_config = load_config()
            self.saga = SagaCore(self.saga_config)
            pool = self.kv_cache_manager.block_pool
            self.saga_pins: PinTable[Any] = PinTable(
                lambda blocks: pool.free_blocks(reversed(blocks)),
                t0=self.saga_config.saga.eviction_t0,
            )
            self._saga_tracked: dict[str, _Tracked] = {}
            self._saga_pending: dict[str, tuple[str, Retention, Flow]] = {}
            self._saga_steps: dict[int, _Step] = {}
            self._saga_now = time.time()
            self._saga_logged: tuple[Any, ...] = ()
            self._saga_log_at = 0.0
            self._saga_swept = time.monotonic()
            if self.saga_config.saga.afs:
                self.waiting = KeyedQueue(self._saga_key)
            original = self.kv_cache_manager.allocate_slots
            self.kv_cache_manager.allocate_slots = functools.partial(
                self._saga_allocate, original)
            log.info("SAGA scheduler: fair share %s, retention %s, %d KV blocks of %d tokens",
                     "on" if self.saga_config.saga.afs else "off",
                     "on" if self.saga_config.saga.retention else "off",
                     pool.num_gpu_blocks - 1, self.block_size)
            self._saga_log(force=True)

        # ---- arrivals and order -----------------------------------------------------------
        def add_request(self, request: Any) -> None:
            if request.request_id not in self.requests:
                params = request.sampling_params
                hints = parse_hints(params.extra_args if params is not None else None)
                flow = self.saga.arrive(hints, request.request_id, request.num_prompt_tokens,
                                        time.monotonic())
                self._saga_tracked[request.request_id] = _Tracked(flow, hints)
                self._saga_expire()
            super().add_request(request)

        def _saga_key(self, request: Any) -> tuple[Any, ...]:
            tracked = self._saga_tracked.get(request.request_id)
            if tracked is None:
                return (math.inf, 0.0, request.arrival_time, request.request_id)
            own = self.saga.own_work(request.num_tokens - request.num_computed_tokens,
                                     request.max_tokens - request.num_output_tokens)
            waited = max(self._saga_now - request.arrival_time, 0.0)
            return (*self.saga.key(tracked.flow, own, waited), request.arrival_time,
                    request.request_id)

        def _saga_waiting(self) -> set[str]:
            out = set()
            for queue in (self.waiting, self.kv_holding_waiting):
                for request in queue.items() if isinstance(queue, KeyedQueue) else list(queue):
                    tracked = self._saga_tracked.get(request.request_id)
                    if tracked is not None:
                        out.add(tracked.flow.workflow)
            return out

        def _saga_expire(self) -> None:
            if self.saga_pins.pins and self.saga_pins.expire(
                    time.monotonic(), self._saga_waiting()):
                self._saga_log()

        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            self._saga_expire()
            if now - self._saga_swept > 1.0:
                self._saga_swept = now
                for flow in self.saga.sweep(now):
                    self.saga_pins.release(flow.workflow, "expiry")
            self._saga_now = time.time()
            if isinstance(self.waiting, KeyedQueue):
                self.waiting.refresh()
            output = super().schedule(*args, **kwargs)
            step = _Step(time.monotonic())
            for req_id, tokens in output.num_scheduled_tokens.items():
                tracked = self._saga_tracked.get(req_id)
                tenant = tracked.flow.tenant if tracked is not None else "default"
                step.tokens[tenant] = step.tokens.get(tenant, 0) + tokens
                step.decode_only &= tokens == 1
            if step.tokens:
                if len(self._saga_steps) > 64:  # outputs never reported back: forget them
                    self._saga_steps.clear()
                self._saga_steps[id(output)] = step
            self._saga_log()
            return output

        def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
            step = self._saga_steps.pop(id(scheduler_output), None)
            if step is not None:
                seconds = time.monotonic() - step.started
                total = sum(step.tokens.values())
                for tenant, tokens in step.tokens.items():
                    self.saga.charge(tenant, seconds * tokens / total)
                self.saga.observe_step(seconds, total, step.decode_only)
            return super().update_from_output(scheduler_output, model_runner_output)

        # ---- finishes and pins ------------------------------------------------------------
        def _free_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            tracked = self._saga_tracked.pop(request.request_id, None)
            if tracked is not None:
                pool = self.kv_cache_manager.block_pool
                capacity = pool.num_gpu_blocks - 1
                free = pool.get_num_free_blocks()
                queued = (self.waiting.items() if isinstance(self.waiting, KeyedQueue)
                          else list(self.waiting))
                demand = sum(math.ceil(r.num_tokens / self.block_size) for r in queued)
                memory = keep.MemoryState(capacity=capacity, held=capacity - free,
                                          waiting_demand=demand,
                                          waiting_calls=len(queued))
                done = Finish(
                    prompt_tokens=request.num_prompt_tokens,
                    output_tokens=request.num_output_tokens,
                    blocks=math.ceil(request.num_tokens / self.block_size),
                    completed=request.status in completed,
                )
                decision = self.saga.finish(tracked.flow, tracked.hints, done, memory,
                                            time.monotonic())
                if decision.kind == "pin" and decision.ttl > 0:
                    self._saga_pending[request.request_id] = (
                        tracked.flow.workflow, decision, tracked.flow)
            out = super()._free_request(request, *args, **kwargs)
            self._saga_log()
            return out

        def _free_request_blocks(self, request: Any) -> None:
            pending = self._saga_pending.pop(request.request_id, None)
            if pending is not None and self._request_blocks_can_be_freed(request):
                workflow, decision, flow = pending
                blocks = self.kv_cache_manager.pop_blocks_for_free(request)
                if blocks:
                    self.saga_pins.pin(workflow, blocks, time.monotonic(), decision.ttl,
                                       flow.p_return, flow.next_use)
                    self._saga_log()
                return
            super()._free_request_blocks(request)

        def _saga_allocate(self, original: Callable[..., Any], request: Any, *args: Any,
                           **kwargs: Any) -> Any:
            tracked = self._saga_tracked.get(request.request_id)
            workflow = tracked.flow.workflow if tracked is not None else None
            while True:
                blocks = original(request, *args, **kwargs)
                if blocks is not None:
                    if (workflow is not None and request.status in admitting
                            and self.saga_pins.holds(workflow)):
                        self.saga_pins.release(workflow, "return")  # its prefix is taken
                        self._saga_log()
                    return blocks
                if not self.saga_pins.pins or not self._saga_may_fit(request, kwargs):
                    return None
                self.saga_pins.relieve(time.monotonic(), self._saga_waiting(), workflow)
                self._saga_log()

        def _saga_may_fit(self, request: Any, kwargs: Mapping[str, Any]) -> bool:
            """Whether releasing every pin could let ``request`` allocate (else pins are
            kept: giving them up would not help)."""
            free: int = self.kv_cache_manager.block_pool.get_num_free_blocks()
            hit: int = kwargs.get("num_new_computed_tokens", 0) or 0
            have: int = request.num_computed_tokens + hit
            need = math.ceil((request.num_tokens + 1) / self.block_size) - have // self.block_size
            return bool(free + self.saga_pins.pinned_blocks >= need)

        def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> Any:
            self.saga_pins.release_all("reset")
            return super().reset_prefix_cache(*args, **kwargs)

        # ---- counters ---------------------------------------------------------------------
        def saga_stats(self) -> dict[str, Any]:
            """Pins and releases, decisions, tenants' normalized service (seconds / weight)."""
            return {
                **self.saga_pins.counters,
                "pinned_blocks": self.saga_pins.pinned_blocks,
                "pinned_workflows": len(self.saga_pins.pins),
                "free_blocks": self.kv_cache_manager.block_pool.get_num_free_blocks(),
                **self.saga.stats(),
            }

        def _saga_log(self, force: bool = False) -> None:
            """A saga-stats line when pins, releases or decisions changed (at most one per
            ``stats_interval``; a change held back is logged on a later step)."""
            mark = (tuple(self.saga_pins.counters.values()), self.saga_pins.pinned_blocks,
                    tuple(self.saga.decisions.values()))
            now = time.monotonic()
            if not force and (mark == self._saga_logged or now - self._saga_log_at < (
                    self.saga_config.stats_interval)):
                return
            self._saga_logged, self._saga_log_at = mark, now
            log.info("%s%s", STATS_MARKER, json.dumps(self.saga_stats(), sort_keys=True))

    SagaScheduler.__module__ = __name__
    SagaScheduler.__qualname__ = "SagaScheduler"
    return SagaScheduler


@functools.cache
def _scheduler_class() -> type[Any]:
    return _build_scheduler_class()


def __getattr__(name: str) -> Any:
    # ``SagaScheduler`` is built on first lookup, so this module imports without vLLM.
    if name == "SagaScheduler":
        return _scheduler_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
