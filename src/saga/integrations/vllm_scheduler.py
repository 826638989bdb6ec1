"""SAGA inside vLLM: a V1 scheduler class with Agent Fair Share and tool-aware KV retention.

Load it with ``--scheduler-cls saga.integrations.vllm_scheduler.SagaScheduler`` (and the
checkout on vLLM's ``PYTHONPATH``: :func:`saga.integrations.engines.start_vllm` with
``saga_scheduler=True`` does both; docs/engines.md, "SAGA inside vLLM"). It is vLLM's own
scheduler with four things changed, each decided by the scheduler core's
:class:`~saga.sched.saga.policy.SagaPolicy` itself, the very object the simulator and the
gateway drive, bound to this engine through the vLLM adapter
(:mod:`saga.integrations.vllm_view`; docs/architecture.md):

* **queue order** (Agent Fair Share, :mod:`~saga.sched.saga.fairshare`): the waiting queue
  is a :class:`KeyedQueue` ordered by the policy's ``queue_key``: the tenant's normalized
  service first, then the workflow's expected remaining work minus the aging credit, then
  arrival. Service is charged by the policy as in every runtime: SAGA's predicted work of
  each finished call, priced at ``t_token`` seconds per prefill token and ``t_decode``
  per decode step (:class:`~saga.integrations.vllm_view.StepCost`).
* **retention** (:mod:`~saga.sched.saga.retention`): when a request of a workflow
  finishes, its KV blocks are kept referenced (not in the free queue, so never evicted)
  for a TTL, when the request says so (``saga_ttl``) or, without a hint, when the policy's
  ``retention`` picks ``pin`` from the workflow's learned Agent Execution Graph
  (:mod:`~saga.sched.saga.graph`) and the engine's memory state. A pin is released when
  the workflow's next request is admitted (after it took its prefix hit), when its TTL
  expires, or under memory pressure (an allocation fails: least valuable pin first, by
  the policy's eviction key, SAGA's next-use order).
* **step size** (the decode guard, :mod:`~saga.sched.saga.chunking`): while several
  requests decode, each step computes at most ``decode_guard_share`` of the step's token
  budget in prompt tokens, set per step through vLLM's own ``long_prefill_token_threshold``
  and token budget (:meth:`SagaInVLLM.step_limits`), so decodes do not wait out long
  prefill chunks.
* **observations**: per workflow the call sites, tool gaps, prompt growth and output
  lengths feed the graph, as in the gateway (the policy's ``on_call_ready`` and
  ``on_call_finished``).

Per-request hints come in ``vllm_xargs`` (``SamplingParams.extra_args``), see
:func:`parse_hints`: ``saga_workflow``, ``saga_tenant``, ``saga_agent``, ``saga_tool``
(the tool that ran before this call), ``saga_end`` (the workflow's last call) and
``saga_ttl`` (seconds to keep the KV after this call; 0 releases it at once).

Configuration: environment variable ``SAGA_VLLM_SCHEDULER`` holding the JSON of a
:class:`VLLMSchedulerConfig` (tenant weights, TTL cap, ... under ``"saga"``).
Counters (pins, pinned blocks, releases by return, expiry and pressure, decisions, the
tenants' normalized service) go to vLLM's log as ``saga-stats {json}`` lines.

The module imports vLLM only when :data:`SagaScheduler` is first looked up, so its pure
parts (hints, :class:`KeyedQueue`, :class:`PinTable`, :class:`SagaInVLLM`) load and are
tested without vLLM.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from saga.engine.kvcache import KVNode
from saga.integrations.vllm_view import StepCost, VLLMCall, VLLMReplicaView, VLLMState
from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import Policy, PolicyContext
from saga.sched.saga.chunking import decoding
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy
from saga.sched.view import CallInfo, PinView, WorkflowInfo

__all__ = [
    "CONFIG_ENV",
    "SCHEDULER_CLS",
    "STATS_MARKER",
    "Hints",
    "KeyedQueue",
    "PinTable",
    "PinnedBlocks",
    "SagaInVLLM",
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
        description="Seconds per prefill token: the policy's price of prompt work "
        "(its predictions, hence fair-share charges and retention's recompute cost).",
    )
    t_decode: float = Field(
        0.02, gt=0.0, description="Seconds per decode step: the policy's price of output work.",
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
class PinnedBlocks(Generic[B]):
    """KV blocks of one finished request, kept referenced for its workflow."""

    workflow: str
    blocks: list[B]
    created: float
    expires: float


class PinTable(Generic[B]):
    """Pinned blocks by workflow, on an injected clock; ``free`` gives blocks back to the
    engine's pool (for vLLM: the block pool's ``free_blocks``, tail block first).

    Pressure releases the least valuable pin first, by ``value(workflow, now)``: the
    policy's eviction key of the workflow's KV (for SAGA its next-use value, see
    :meth:`SagaInVLLM.pin_value`). Ties go to the oldest pin.
    """

    def __init__(
        self, free: Callable[[list[B]], None], value: Callable[[str, float], float],
    ) -> None:
        self._free = free
        self._value = value
        self.pins: dict[str, list[PinnedBlocks[B]]] = {}
        self.pinned_blocks = 0
        self.counters: dict[str, int] = {
            "pins": 0, **{f"released_{r}": 0 for r in RELEASE_REASONS},
            **{f"released_blocks_{r}": 0 for r in RELEASE_REASONS},
        }

    def __len__(self) -> int:
        return sum(len(p) for p in self.pins.values())

    def latest(self) -> dict[str, PinnedBlocks[B]]:
        """Each pinned workflow's latest pin (what a policy reads as its pin)."""
        return {w: pins[-1] for w, pins in self.pins.items()}

    def pin(self, workflow: str, blocks: list[B], now: float, ttl: float) -> PinnedBlocks[B]:
        pin = PinnedBlocks(workflow, list(blocks), now, now + ttl)
        self.pins.setdefault(workflow, []).append(pin)
        self.pinned_blocks += len(pin.blocks)
        self.counters["pins"] += 1
        return pin

    def holds(self, workflow: str) -> bool:
        return workflow in self.pins

    def _drop(self, pin: PinnedBlocks[B], reason: str) -> int:
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

    def victims(self, now: float, spare: str | None = None) -> list[PinnedBlocks[B]]:
        """Pins in the order pressure releases them: ``spare``'s (the workflow asking for
        memory) last, then least valuable first, then oldest first."""
        pins = [p for ps in self.pins.values() for p in ps]
        value = self._value
        return sorted(pins, key=lambda p: (p.workflow == spare, value(p.workflow, now),
                                           p.created, p.workflow))

    def relieve(self, now: float, spare: str | None = None) -> int:
        """Release the least valuable pin for memory; the blocks freed (0: none left)."""
        order = self.victims(now, spare)
        return self._drop(order[0], "pressure") if order else 0


# ---- SAGA's policy over the vLLM view ----------------------------------------------------------
@dataclass(slots=True)
class _Workflow:
    """A workflow as the scheduler sees it in vLLM (for calls, idle ends and hints)."""

    info: WorkflowInfo
    anonymous: bool
    calls: int = 0
    in_flight: int = 0
    last_seen: float = 0.0


class SagaInVLLM:
    """The scheduler core's :class:`~saga.sched.saga.policy.SagaPolicy`, bound to one vLLM
    engine through :class:`~saga.integrations.vllm_view.VLLMReplicaView`.

    Pure, on an injected clock (the scheduler class passes ``now``): ``SagaScheduler``
    calls :meth:`arrive`, :meth:`key`, :meth:`scheduled`, :meth:`finish`, :meth:`sweep`
    and carries out what they return; tests drive it over fakes. It turns vLLM's
    requests into :class:`~saga.sched.view.CallInfo` (from the hints), asks the policy
    (``on_call_ready``, ``place``, ``queue_key``, ``retention``, ``on_call_finished``,
    ``on_workflow_finished``) and applies the request's own ``saga_ttl`` hint over the
    policy's retention. Fair share is charged by the policy as everywhere else: SAGA's
    predicted work of each finished call, priced by :class:`StepCost`.
    """

    def __init__(
        self, config: VLLMSchedulerConfig, state: VLLMState, free: Callable[[list[Any]], None],
        *, block_size: int, capacity_blocks: int, max_num_batched_tokens: int,
        policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.policy = policy if policy is not None else SagaPolicy(config.saga)
        self.calls: dict[str, VLLMCall] = {}
        self.hints: dict[str, Hints] = {}
        self.workflows: dict[str, _Workflow] = {}
        self.pins: PinTable[Any] = PinTable(free, self.pin_value)
        self.view = VLLMReplicaView(
            state, self.calls, _LatestPins(self.pins), block_size=block_size,
            capacity_blocks=capacity_blocks, max_num_batched_tokens=max_num_batched_tokens,
        )
        self.cost = StepCost(config.t_token, config.t_decode)
        self.policy.bind(PolicyContext([self.view], self.cost, block_size, random.Random(0)))
        self._eviction = self.policy.eviction_order(0)
        self.decisions: dict[str, int] = {"pin": 0, "release": 0, "drop": 0, "offload": 0}
        self.hinted = 0
        self._seq = 0

    # ---- arrivals and order -----------------------------------------------------------
    def arrive(self, request: Any, hints: Hints, now: float) -> VLLMCall:
        """A request arrived: the policy sees the call ready and places it (one replica:
        placement only prices the call, which its queue key uses)."""
        anonymous = hints.workflow is None
        name = f"req:{request.request_id}" if anonymous else str(hints.workflow)
        wf = self.workflows.get(name)
        if wf is None:
            wf = self.workflows[name] = _Workflow(
                WorkflowInfo(name, hints.tenant, hints.agent, now, None), anonymous)
        info = CallInfo(
            workflow=name, tenant=wf.info.tenant, agent=wf.info.agent,
            call_id=str(request.request_id), index=wf.calls, tool=hints.tool,
            prompt_tokens=int(request.num_prompt_tokens), runs=(), issued_at=now,
            workflow_arrival=wf.info.arrival, slo=None, ends_workflow=anonymous or hints.end,
        )
        wf.calls += 1
        wf.in_flight += 1
        wf.last_seen = now
        self._seq += 1
        call = VLLMCall(request, info, self._seq, now, self.view.block_tokens)
        self.calls[request.request_id] = call
        self.hints[request.request_id] = hints
        self.policy.on_call_ready(info, now)
        self.policy.place(info, now)
        return call

    def key(self, request: Any, now: float) -> tuple[float, ...]:
        """The policy's queue key of a waiting request (untracked ones go last)."""
        call = self.calls.get(request.request_id)
        if call is None:
            return (math.inf, 0.0, float(request.arrival_time), 0.0)
        return self.policy.queue_key(self.view, call, now)

    def scheduled(self, request_ids: Iterable[str], now: float) -> None:
        """These requests were scheduled in a step (the first time sets ``scheduled_at``)."""
        for request_id in request_ids:
            call = self.calls.get(request_id)
            if call is not None and call.scheduled_at < 0:
                call.scheduled_at = now

    def workflow_of(self, request_id: str) -> str | None:
        """The workflow of a request being served (None for one not seen arriving)."""
        call = self.calls.get(request_id)
        return call.workflow if call is not None else None

    def waiting_workflows(self) -> set[str]:
        return {call.workflow for call in self.view.waiting}

    def step_limits(self, now: float, budget: int, threshold: int) -> tuple[int, int]:
        """vLLM's token budget of the coming step (``max_num_scheduled_tokens``) and its
        per-request prefill chunk (``long_prefill_token_threshold``, 0: none), from the
        engine's own ``budget`` and ``threshold`` and the policy's prefill limit (SAGA's
        decode guard, :mod:`saga.sched.saga.chunking`): a chunk of at most the limit,
        and a budget of the limit plus one token per decoding request. With one call in
        prefill that is the simulator's rule exactly; with several, vLLM gives the
        second chunk what the budget has left, which the decodes after it in vLLM's
        running order then wait a step for."""
        limit = self.policy.prefill_limit(self.view, now)
        if limit is None:
            return budget, threshold
        decodes = sum(1 for call in self.view.running if decoding(call))
        chunk = limit if threshold <= 0 else min(threshold, limit)
        return min(budget, limit + decodes), chunk

    # ---- finishes and pins ------------------------------------------------------------
    def finish(self, request: Any, completed: bool, now: float) -> Retention:
        """A request finished (``completed``: stopped or hit its length, not aborted):
        the policy decides what becomes of its KV, a ``saga_ttl`` hint overriding it.
        ``pin`` (with its TTL) is the only decision the engine acts on; the others leave
        vLLM's LRU in charge."""
        call = self.calls.pop(request.request_id, None)
        hints = self.hints.pop(request.request_id, Hints())
        if call is None:
            return RELEASE
        info = call.info
        wf = self.workflows[info.workflow]
        wf.in_flight = max(wf.in_flight - 1, 0)
        wf.last_seen = now
        decision = self.policy.retention(self.view, call, now)
        goes_on = not info.ends_workflow
        if wf.anonymous or (goes_on and (not completed or not self.config.saga.retention)):
            decision = RELEASE
        elif not info.ends_workflow and hints.ttl is not None:
            self.hinted += 1
            ttl = min(hints.ttl, self.config.saga.ttl_max)
            decision = Retention("pin", ttl=ttl) if ttl > 0 else RELEASE
        self.policy.on_call_finished(info, 0, now)
        if info.ends_workflow:
            self._end(wf, now)
        self.decisions[decision.kind] += 1
        return decision

    def pin_value(self, workflow: str, now: float) -> float:
        """What a pin of ``workflow`` is worth keeping: the policy's eviction key of the
        workflow's KV (SAGA: the chance it calls again over the time to its next call;
        about to call when a request of it waits; nothing once it has ended)."""
        return self._eviction.key(KVNode(f"w:{workflow}", 0, 1, None), now)

    # ---- workflow ends ----------------------------------------------------------------
    def _end(self, wf: _Workflow, now: float) -> None:
        if self.workflows.pop(wf.info.workflow, None) is not None:
            self.policy.on_workflow_finished(wf.info, now)

    def sweep(self, now: float) -> list[str]:
        """End the workflows idle for longer than ``idle_timeout`` (they never sent
        ``saga_end``); their names are returned (the scheduler lets their pins go)."""
        limit = self.config.idle_timeout
        idle = [wf for wf in self.workflows.values()
                if wf.in_flight == 0 and now - wf.last_seen > limit]
        for wf in idle:
            self._end(wf, now)
        return [wf.info.workflow for wf in idle]

    def stats(self) -> dict[str, Any]:
        fair = getattr(self.policy, "fair", None)
        service = {} if fair is None else {
            t: round(a.normalized, 6) for t, a in sorted(fair.tenants.items())}
        return {
            "decisions": dict(self.decisions),
            "hinted": self.hinted,
            "workflows": sum(1 for wf in self.workflows.values() if not wf.anonymous),
            "service": service,
            "t_token": self.cost.t_token,
            "t_decode": self.cost.t_decode,
        }


class _LatestPins(Mapping[str, PinView]):
    """The pin table as a policy reads pins: workflow -> its latest pin."""

    def __init__(self, table: PinTable[Any]) -> None:
        self._table = table

    def __getitem__(self, workflow: str) -> PinView:
        return self._table.pins[workflow][-1]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table.pins))

    def __len__(self) -> int:
        return len(self._table.pins)


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

        It is the :class:`~saga.integrations.vllm_view.VLLMState` its SAGA reads. Overrides:
        ``add_request`` (hints, the policy sees the call, pin expiry), ``schedule`` (expiry,
        idle ends, queue refresh, the step's token limits, first-scheduled times),
        ``_free_request`` (the retention decision), ``_free_request_blocks`` (pin instead of
        free), ``reset_prefix_cache``
        (pins go first); the KV manager's ``allocate_slots`` is wrapped to release pins on
        pressure and on a workflow's return.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.saga_config = load_config()
            pool = self.kv_cache_manager.block_pool
            budget = getattr(self, "max_num_scheduled_tokens", None) or (
                self.scheduler_config.max_num_batched_tokens)
            self.saga = SagaInVLLM(
                self.saga_config, self, lambda blocks: pool.free_blocks(reversed(blocks)),
                block_size=self.block_size, capacity_blocks=pool.num_gpu_blocks - 1,
                max_num_batched_tokens=int(budget),
            )
            self.saga_pins = self.saga.pins
            # the engine's own step limits, which the decode guard lowers step by step
            self._saga_budget = int(budget)
            self._saga_threshold = int(
                getattr(self.scheduler_config, "long_prefill_token_threshold", 0) or 0)
            self._saga_pending: dict[str, tuple[str, Retention]] = {}
            self._saga_now = time.monotonic()
            self._saga_logged: tuple[Any, ...] = ()
            self._saga_log_at = 0.0
            self._saga_swept = time.monotonic()
            # CPU seconds of this engine thread (time.thread_time): the whole of
            # ``schedule`` against vLLM's own part of it, and SAGA's hooks on arrival and
            # finish, so its per-step cost on a one-core replica is measured, not guessed
            self.saga_cpu: dict[str, float] = {
                "steps": 0, "schedule": 0.0, "schedule_vllm": 0.0, "arrive": 0.0,
                "finish": 0.0}
            if self.saga_config.saga.afs:
                keyed: KeyedQueue[Any] = KeyedQueue(lambda r: self.saga.key(r, self._saga_now))
                self.waiting = keyed
            original = self.kv_cache_manager.allocate_slots
            self.kv_cache_manager.allocate_slots = functools.partial(
                self._saga_allocate, original)
            log.info("SAGA scheduler: fair share %s, retention %s, %d KV blocks of %d tokens",
                     "on" if self.saga_config.saga.afs else "off",
                     "on" if self.saga_config.saga.retention else "off",
                     pool.num_gpu_blocks - 1, self.block_size)
            self._saga_log(force=True)

        # ---- what the view reads (VLLMState) --------------------------------------------
        def saga_waiting_requests(self) -> list[Any]:
            out: list[Any] = []
            for queue in (self.waiting, self.kv_holding_waiting):
                out.extend(queue.items() if isinstance(queue, KeyedQueue) else list(queue))
            return out

        def saga_running_requests(self) -> list[Any]:
            return list(self.running)

        def saga_free_blocks(self) -> int:
            return int(self.kv_cache_manager.block_pool.get_num_free_blocks())

        # ---- arrivals and order -----------------------------------------------------------
        def add_request(self, request: Any) -> None:
            if request.request_id not in self.requests:
                t0 = time.thread_time()
                params = request.sampling_params
                hints = parse_hints(params.extra_args if params is not None else None)
                self.saga.arrive(request, hints, time.monotonic())
                self._saga_expire()
                self.saga_cpu["arrive"] += time.thread_time() - t0
            super().add_request(request)

        def _saga_expire(self) -> None:
            if self.saga_pins.pins and self.saga_pins.expire(
                    time.monotonic(), self.saga.waiting_workflows()):
                self._saga_log()

        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            now = time.monotonic()
            self._saga_expire()
            if now - self._saga_swept > 1.0:
                self._saga_swept = now
                for workflow in self.saga.sweep(now):
                    self.saga_pins.release(workflow, "expiry")
            self._saga_now = now
            if isinstance(self.waiting, KeyedQueue):
                self.waiting.refresh()
            self._saga_step_limits(now)
            t1 = time.thread_time()
            output = super().schedule(*args, **kwargs)
            t2 = time.thread_time()
            self.saga.scheduled(output.num_scheduled_tokens, now)
            self._saga_log()
            cpu = self.saga_cpu
            cpu["steps"] += 1
            cpu["schedule_vllm"] += t2 - t1
            cpu["schedule"] += time.thread_time() - t0
            return output

        def _saga_step_limits(self, now: float) -> None:
            """Set vLLM's token budget and prefill chunk of this step (the decode guard;
            both are read by vLLM's ``Scheduler.schedule`` each step,
            vllm/v1/core/sched/scheduler.py)."""
            budget, threshold = self.saga.step_limits(
                now, self._saga_budget, self._saga_threshold)
            if hasattr(self, "max_num_scheduled_tokens"):
                self.max_num_scheduled_tokens = budget
            self.scheduler_config.long_prefill_token_threshold = threshold

        # ---- finishes and pins ------------------------------------------------------------
        def _free_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            workflow = self.saga.workflow_of(request.request_id)
            decision = self.saga.finish(request, request.status in completed, time.monotonic())
            if workflow is not None and decision.kind == "pin" and decision.ttl > 0:
                self._saga_pending[request.request_id] = (workflow, decision)
            self.saga_cpu["finish"] += time.thread_time() - t0
            out = super()._free_request(request, *args, **kwargs)
            self._saga_log()
            return out

        def _free_request_blocks(self, request: Any) -> None:
            pending = self._saga_pending.pop(request.request_id, None)
            if pending is not None and self._request_blocks_can_be_freed(request):
                workflow, decision = pending
                blocks = self.kv_cache_manager.pop_blocks_for_free(request)
                if blocks:
                    self.saga_pins.pin(workflow, blocks, time.monotonic(), decision.ttl)
                    self._saga_log()
                return
            super()._free_request_blocks(request)

        def _saga_allocate(self, original: Callable[..., Any], request: Any, *args: Any,
                           **kwargs: Any) -> Any:
            workflow = self.saga.workflow_of(request.request_id)
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
                self.saga_pins.relieve(time.monotonic(), workflow)
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
                "cpu": {k: round(v, 6) for k, v in self.saga_cpu.items()},
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
