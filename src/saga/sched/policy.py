"""The scheduler core's interface: what a policy observes and what it decides.

A policy is pure decision code. It is told what happened (a workflow arrived, a
call is ready, a call finished) with the time passed in, and it answers with
plain data: a replica index, a queue key, a :class:`~saga.sched.decisions.Retention`,
an :class:`~saga.sched.decisions.Admission`, an eviction order. It never reads the
wall clock, never sleeps and never does I/O, so the simulator and the gateway
drive the very same objects.

Extension points, each small: :class:`Router` (where a call goes), the queue key
(which call is served first, and so which is preempted first), retention (what
a finished call's KV does during the tool call), eviction order, and admission.
:class:`Policy` composes them; the registry in :mod:`saga.sched.registry` builds
each named policy one way.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from saga.engine.kvcache import EvictionOrder, LRUEviction
from saga.sched.decisions import ADMIT, RELEASE, Admission, Retention
from saga.sched.view import (
    ORACLE_FIELDS,
    CallInfo,
    CallView,
    CostView,
    ReplicaView,
    WorkflowInfo,
)

if TYPE_CHECKING:
    from saga.sched.saga.graph import GraphStore

# CallInfo and WorkflowInfo live in saga.sched.view; imported from here they still work.
__all__ = ["ORACLE_FIELDS", "CallInfo", "Policy", "PolicyContext", "Router", "WorkflowInfo"]


@dataclass(slots=True)
class PolicyContext:
    """What a policy is bound to: the replicas it observes, the cost model it may use
    for predictions, and a seeded random generator. No clock: time is passed in."""

    replicas: Sequence[ReplicaView]
    cost: CostView
    block_tokens: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class Router(ABC):
    """Chooses the replica for a ready call. One small class per routing rule."""

    name: ClassVar[str] = "router"

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def place(self, call: CallInfo, now: float) -> int:
        """The index of the replica for ``call``."""

    def up_replicas(self) -> list[int]:
        ups = [r.index for r in self.ctx.replicas if r.up]
        if not ups:
            raise RuntimeError("no replica is up")
        return ups


class Policy:
    """A complete scheduling policy. The defaults are vLLM v1's behaviour: first come
    first served, release KV to the LRU free queue, admit everything."""

    name: ClassVar[str] = "policy"
    #: Offline bounds read the future; the gateway refuses them.
    offline: ClassVar[bool] = False
    #: True when queue_key never changes for a request (FCFS): the engine then sorts
    #: its queues only when they change. Policies with aging or service-based keys
    #: must set it False.
    static_order: ClassVar[bool] = True

    def __init__(self, router: Router) -> None:
        self.router = router

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.router.bind(ctx)

    # ---- decisions ----------------------------------------------------------------
    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        return ADMIT

    def place(self, call: CallInfo, now: float) -> int:
        return self.router.place(call, now)

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        """First come first served at the replica (ties by arrival order)."""
        return (request.enqueued_at, request.seq)

    def gateway_queue_key(
        self, replica: ReplicaView, request: CallView, now: float
    ) -> tuple[float, ...]:
        """The order of the calls a gateway holds for ``replica``'s concurrency slots when
        the engine takes no priority and never preempts (llama.cpp: a call sent runs to its
        end), lower first: the only order such an engine gets. The simulator and engines
        that order their own queue never ask it. By default :meth:`queue_key`."""
        return self.queue_key(replica, request, now)

    def queue_keys(
        self, replica: ReplicaView, now: float
    ) -> Callable[[CallView], tuple[float, ...]]:
        """:meth:`queue_key` of ``replica``'s calls at ``now`` as one function, what the
        engine sorts a queue by (asked afresh for each sort). A policy whose keys the
        engine asks often may return a cheaper function with the same answers."""
        queue_key = self.queue_key
        return lambda request: queue_key(replica, request, now)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        return RELEASE

    def preempt_for(
        self, replica: ReplicaView, waiting: CallView, running: CallView, now: float
    ) -> bool:
        """Preempt ``running`` on a full replica so that ``waiting`` can start? Never,
        unless a policy preempts for fairness (vLLM preempts only for memory)."""
        return False

    def prefill_limit(self, replica: ReplicaView, now: float) -> int | None:
        """Most prompt tokens (prefill chunks of all calls) the replica's next step may
        compute; None: the step's token budget alone, as vLLM by default."""
        return None

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return LRUEviction()

    def unpin_order(self, replica: ReplicaView, now: float) -> list[str]:
        """Pins to give up under memory pressure, first first: earliest expiry."""
        pins = replica.pins
        return sorted(pins, key=lambda w: (pins[w].expires, w))

    def set_tenant_weights(self, weights: Mapping[str, float]) -> None:
        """Fair-share weights of tenants (from a deployment's config); a policy without
        a notion of tenants ignores them."""

    def learned_graphs(self) -> GraphStore | None:
        """The Agent Execution Graphs the policy learns, if it learns any (the gateway
        shares them with other gateways through its store); None for the others."""
        return None

    # ---- observations (for learning policies) -----------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        """A call's dependencies are done and its tool time has passed."""

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        """A call produced its last token on ``replica``."""

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        """The workflow's last call finished."""

    def on_admission_withdrawn(self, workflow: WorkflowInfo, now: float) -> None:
        """A workflow that ``admit`` deferred will not ask again (its client gave up):
        forget any place it holds in an admission queue."""
