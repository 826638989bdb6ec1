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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from saga.engine.kvcache import EvictionOrder, LRUEviction, Run
from saga.sched.decisions import ADMIT, RELEASE, Admission, Retention

if TYPE_CHECKING:
    from saga.engine.costmodel import CostModel
    from saga.engine.replica import Replica, Request
    from saga.sched.saga.graph import GraphStore


@dataclass(slots=True)
class CallInfo:
    """What a policy may know about a call when it becomes ready.

    ``output_tokens`` is the call's true output length: known to the simulator,
    not to a real scheduler. Only offline bounds (``belady``) may read it, and
    ``next_gap`` (the tool time before the workflow's next call) and ``next_runs``
    (the KV blocks of the next call's prompt) likewise.
    ``after`` names the calls this one waited for (the DAG's edges, as a client's
    request would say which results it carries) and ``next_tool`` the tool that the
    call's output invokes (visible in a real response's tool call), if any.

    ``turn_ended`` says what the call's response shows: False if it invokes a tool (the
    client will call again), True if it ends the turn (only a human's message may follow),
    None when the runtime does not report it.

    ``ends_workflow`` is the client's end marker (the gateway's ``x-saga-end`` header):
    set only on the last call of a workflow whose client sends one (``end_signal =
    "explicit"``). ``oracle_last_call`` is the truth, whether or not the client says it:
    the call is its workflow's last. Only offline bounds may read it (:data:`ORACLE_FIELDS`).
    """

    workflow: str
    tenant: str
    agent: str
    call_id: str
    index: int
    tool: str | None
    prompt_tokens: int
    runs: tuple[Run, ...]
    issued_at: float
    workflow_arrival: float
    slo: float | None
    ends_workflow: bool
    output_tokens: int = 0
    next_gap: float | None = None
    after: tuple[str, ...] = ()
    next_tool: str | None = None
    next_runs: tuple[Run, ...] | None = None
    oracle_last_call: bool = False
    turn_ended: bool | None = None


#: What the simulator knows and a real gateway does not: only policies with
#: ``offline = True`` may read these fields of :class:`CallInfo`.
ORACLE_FIELDS: tuple[str, ...] = ("output_tokens", "next_gap", "next_runs", "oracle_last_call")


@dataclass(slots=True)
class WorkflowInfo:
    """A workflow as a policy sees it when it arrives (no knowledge of its calls)."""

    workflow: str
    tenant: str
    agent: str
    arrival: float
    slo: float | None


@dataclass(slots=True)
class PolicyContext:
    """What a policy is bound to: the replicas it observes, the cost model it may use
    for predictions, and a seeded random generator. No clock: time is passed in."""

    replicas: Sequence[Replica]
    cost: CostModel
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

    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        """First come first served at the replica (ties by arrival order)."""
        return (request.enqueued_at, request.seq)

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        return RELEASE

    def preempt_for(self, replica: Replica, waiting: Request, running: Request, now: float) -> bool:
        """Preempt ``running`` on a full replica so that ``waiting`` can start? Never,
        unless a policy preempts for fairness (vLLM preempts only for memory)."""
        return False

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return LRUEviction()

    def unpin_order(self, replica: Replica, now: float) -> list[str]:
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
