"""Memory gate: admit new workflows only while their working set fits the cluster's KV.

Agent workflows hold their context across tool calls. When the contexts of the
workflows in flight outgrow the KV memory, every policy that admits them all
thrashes: each call finds its prefix evicted, recomputes it, and evicts someone
else's. Completed throughput falls off a cliff (in the simulator, to a quarter of
the peak on ``paper-a100-64``). The gate keeps the active set's working set within
``memory_budget`` x the cluster's KV capacity and queues new workflows, first come
first served (interactive tenants ahead of best-effort ones; newest first once the first
in line has waited ``lifo_after``: :meth:`MemoryGate.head`), until it fits again;
while interactive work is in flight best effort leaves ``interactive_reserve`` of the
limit free, so a flood at the limit never holds an interactive arrival at the door.
Work then waits at the door instead of thrashing inside, which is the point of
scheduling the workflow rather than the call.

A workflow's working set is its current context (prompt plus output of its last
call) and, by default, the growth its next call is expected to append (``gate_growth``:
:func:`counted_growth`; an agent's context grows call by call, so a set admitted on
current contexts alone outgrows the KV a call later); a workflow that has not yet called
counts as the running mean context of its agent type at first call (a prior until one is
seen), learned per tenant. A shared prompt prefix (an agent's system prompt and tool
schemas) is held once by the prefix cache however many workflows use it, so the working
set counts it once
(:class:`SharedPrefixes`), not once per workflow. The simulator names such prefixes
(runs in an ``s:`` namespace); the gateway does not need to: its runs are blocks named by
a hash chained over the whole prefix (``saga.wire.prefix``), so two prompts share exactly
the blocks of their common prefix, and a block sent by several workflows is shared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saga.core.blocks import NamespacedRun
from saga.sched.decisions import ADMIT, Admission
from saga.sched.policy import CallInfo, PolicyContext, WorkflowInfo
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import AgentGraph

if TYPE_CHECKING:
    from saga.sched.view import ReplicaView

#: What per-agent learning is keyed by: (tenant, agent type). Agent names are the
#: clients' to choose, so learning is never shared across tenants.
AgentKey = tuple[str, str]


def agent_key(item: WorkflowInfo | CallInfo) -> AgentKey:
    return (item.tenant, item.agent)


def counted_growth(graph: AgentGraph, node: str, mode: str) -> float:
    """The context growth the gate counts beside a workflow's current context once its
    call at ``node`` is ready (``SagaConfig.gate_growth``): none; ``next``, the graph's
    mean prompt growth at ``node`` (what its next call appends), at most its expected
    remaining tokens (an ending workflow grows no more); ``rest``, those remaining tokens."""
    if mode == "none":
        return 0.0
    _, tokens_left = graph.remaining(node)
    if mode == "rest":
        return tokens_left
    return min(tokens_left, graph.growth_tokens(node))


class GrowthTally:
    """The expected growth (:func:`counted_growth`) the gate counts beside each admitted
    workflow's context, per workflow, in whole tokens: the total is exactly 0 again once
    every workflow has left (an empty cluster always admits)."""

    def __init__(self) -> None:
        self._tokens: dict[str, int] = {}
        self.total = 0

    def count(self, workflow: str, growth: float) -> None:
        """``workflow``'s counted growth is now ``growth`` tokens (0: it leaves the count)."""
        tokens = round(growth)
        self.total += tokens - self._tokens.pop(workflow, 0)
        if tokens:
            self._tokens[workflow] = tokens


def memory_gate(ctx: PolicyContext, config: SagaConfig) -> MemoryGate:
    """The gate ``config`` asks for on ``ctx``'s cluster: its limit counts the GPU KV and
    ``gate_host_share`` of the host tier, in tokens."""
    gpu = sum(r.kv.capacity for r in ctx.replicas)
    host = sum(r.host.capacity for r in ctx.replicas if r.host is not None)
    capacity = gpu * ctx.block_tokens + config.gate_host_share * host * ctx.block_tokens
    return MemoryGate(
        capacity, config.memory_budget, config.retry_after, config.prior_context_tokens,
        config.gate_cold_start, config.gate_interactive_reserve, config.gate_lifo_after,
    )


MAX_PREFIX_RUNS = 512
"""Leading runs of a prompt :class:`SharedPrefixes` tracks: 512 hashed blocks are 32,768
tokens at the gateway's default 64-token blocks (a coding agent's system prompt and tool
schemas are about 15,000)."""


def saturated(replicas: Sequence[ReplicaView], threshold: float | None) -> bool:
    """Whether the engines' queues say the cluster is saturated: the calls waiting in the
    up replicas' queues (what vLLM exports as ``num_requests_waiting``) average
    ``threshold`` or more a replica. None: never."""
    if threshold is None:
        return False
    up = [r for r in replicas if r.up]
    return bool(up) and sum(len(r.waiting) for r in up) >= threshold * len(up)


@dataclass
class SharedPrefixes:
    """The shared prompt prefixes of the workflows the gate counts, to count each once.

    Each counted workflow's context includes its prompt's leading runs (see :meth:`hold`);
    the prefix cache holds one copy of each, whatever the number of users.
    :attr:`overcount` is what the per-workflow contexts count beyond one copy of each live
    run: the gate subtracts it from the working set. Known to a gateway: the runs are the
    prompt's chained block hashes, which are equal exactly where two prompts share a prefix.
    """

    block_tokens: int
    overcount: int = 0
    _held: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    # per prefix: its users' lengths in tokens (a prefix may be shared in part) -> users
    _users: dict[str, dict[int, int]] = field(default_factory=dict)

    def hold(self, workflow: str, runs: tuple[NamespacedRun, ...]) -> None:
        """``workflow`` is counted with a prompt of these ``runs``: its shared prefixes now.

        The candidates are the prompt's leading runs up to its first workflow-private one
        (``w:``, the simulator's per-workflow namespace), at most :data:`MAX_PREFIX_RUNS` of
        them: in the simulator one ``s:`` run per shared prefix, in the gateway one run per
        hashed block (a block whose chained hash another workflow also sent is shared,
        whatever its name). The bound keeps the bookkeeping of a gateway's long contexts
        small; shared prefixes sit at the front of a prompt.
        """
        shared: list[tuple[str, int]] = []
        for ns, _, count in runs:
            if ns.startswith("w:") or len(shared) == MAX_PREFIX_RUNS:
                break
            shared.append((ns, count * self.block_tokens))
        self._hold(workflow, tuple(shared))

    def _hold(self, workflow: str, shared: tuple[tuple[str, int], ...]) -> None:
        if self._held.get(workflow) == shared:
            return
        self.drop(workflow)
        if shared:
            self._held[workflow] = shared
            for ns, tokens in shared:
                self._change(ns, tokens, +1)

    def drop(self, workflow: str) -> None:
        """``workflow`` left the count (ended, taken as ended, or finished)."""
        for ns, tokens in self._held.pop(workflow, ()):
            self._change(ns, tokens, -1)

    def _change(self, ns: str, tokens: int, delta: int) -> None:
        # the cache holds the longest user's copy: the rest of the users' tokens are over
        lengths = self._users.setdefault(ns, {})
        self.overcount -= self._over(lengths)
        lengths[tokens] = lengths.get(tokens, 0) + delta
        if not lengths[tokens]:
            del lengths[tokens]
        if lengths:
            self.overcount += self._over(lengths)
        else:
            del self._users[ns]

    @staticmethod
    def _over(lengths: dict[int, int]) -> int:
        if not lengths:
            return 0
        return sum(t * n for t, n in lengths.items()) - max(lengths)


@dataclass
class MemoryGate:
    """FIFO admission queue bounded by the working set (tokens)."""

    capacity_tokens: float
    budget: float
    retry_after: float
    prior_context: float
    cold_start: int = 4
    interactive_reserve: float = 0.0
    #: adaptive LIFO (SagaConfig.gate_lifo_after): None, first in first out always
    lifo_after: float | None = None
    waiting: deque[str] = field(default_factory=deque)
    # per (tenant, agent type): one tenant's first calls never set another's expectation
    _first_context: dict[AgentKey, tuple[float, int]] = field(default_factory=dict)
    # behind()'s answers by (queue length, retry_after): under overload every queued
    # workflow asks again every retry_after seconds, and the answer is the same data
    _behind: dict[tuple[int, float], Admission] = field(default_factory=dict)

    @property
    def limit(self) -> float:
        return self.budget * self.capacity_tokens

    def expected_context(self, key: AgentKey) -> float:
        total, count = self._first_context.get(key, (0.0, 0))
        return total / count if count else self.prior_context

    def observe_first_context(self, key: AgentKey, tokens: int) -> None:
        total, count = self._first_context.get(key, (0.0, 0))
        self._first_context[key] = (total + tokens, count + 1)

    def seen(self, key: AgentKey) -> bool:
        """Whether a first call of ``key``'s agent type (of its tenant) has been observed."""
        return key in self._first_context

    def limit_for(self, workflow: WorkflowInfo, interactive_active: bool) -> float:
        """The limit ``workflow`` is admitted under: best effort leaves
        ``interactive_reserve`` of it free while interactive workflows are in flight."""
        if workflow.slo is None and interactive_active:
            return self.limit * (1.0 - self.interactive_reserve)
        return self.limit

    def decide(
        self, workflow: WorkflowInfo, working_set: float, unplaced: int = 0,
        room: bool = False, interactive_active: bool = False, saturated: bool = False,
        now: float | None = None, slots_full: bool = False,
    ) -> Admission:
        """Admit ``workflow`` if it is first in line and fits beside ``working_set``.

        ``unplaced``: admitted workflows of its tenant's agent type not yet placed. Until a first
        call of the type has been seen its context is only the prior, so at most
        ``cold_start`` of them are let in (a burst of an unknown agent could otherwise be
        admitted whole at the prior and then outgrow the memory).

        ``room``: a replica has no call waiting and free KV for the workflow's expected
        context now, so it is admitted even past the limit (the work-conserving gate).

        ``interactive_active``: workflows with an SLO are in flight, so a best-effort one
        must fit beside the interactive reserve (:meth:`limit_for`).

        ``saturated``: the engines' queues say the cluster is saturated (calls wait there
        for memory), so nothing new is admitted but into an empty cluster.

        ``now``: the time, for the adaptive LIFO order (:meth:`head`); None: first in line.

        ``slots_full``: every slot of the replicas is homed by a workflow in flight
        (:mod:`.slot_gate`), so nothing new is admitted, past ``room`` too, until one frees.
        """
        if workflow.workflow not in self._queued:
            self._queued.add(workflow.workflow)
            if now is not None:
                self._since[workflow.workflow] = now
            if workflow.slo is None:
                self.waiting.append(workflow.workflow)
            else:  # interactive work goes ahead of best effort, in arrival order
                self._insert_interactive(workflow.workflow)
        head = self.head(now)
        key = agent_key(workflow)
        need = self.expected_context(key)
        known = self.seen(key) or unplaced < self.cold_start
        # An empty cluster always admits, so a workflow larger than memory still runs.
        limit = self.limit_for(workflow, interactive_active)
        fits = not slots_full and (working_set <= 0 or (
            known and not saturated and (room or working_set + need <= limit)
        ))
        if head == workflow.workflow and fits:
            self._leave(workflow.workflow)
            return ADMIT
        if slots_full:
            return Admission(
                "defer",
                f"memory gate: every slot is homed by a workflow in flight; "
                f"{len(self.waiting)} workflows in the admission queue",
                self.retry_after,
            )
        if not known:
            return Admission(
                "defer",
                f"memory gate: no call of agent {workflow.agent!r} seen yet and {unplaced} "
                "of its workflows admitted; waiting to learn its context",
                self.retry_after,
            )
        if saturated and working_set > 0:
            return Admission(
                "defer",
                f"memory gate: calls wait in the engines' queues (saturated); "
                f"{len(self.waiting)} workflows in the admission queue",
                self.retry_after,
            )
        reserve = " less the interactive reserve" if limit < self.limit else ""
        return Admission(
            "defer",
            f"memory gate: working set {working_set:,.0f} + {need:,.0f} tokens exceeds "
            f"{limit:,.0f} ({self.budget:g} x KV capacity{reserve}); {len(self.waiting)} "
            "workflows in the admission queue",
            self.retry_after,
        )

    def head(self, now: float | None = None) -> str:
        """The queued workflow the gate admits next (the queue must not be empty): the
        first in line; with ``lifo_after`` set, once the first best-effort workflow in line
        has waited that long, the newest best-effort one instead (adaptive LIFO). Under an
        overload burst first in first out makes every workflow wait the whole backlog, so
        each loses the same slack and many miss; newest first lets the latest in while
        their slack is whole and leaves the wait on those that have lost most of theirs,
        until the queue drains back under the threshold."""
        first = self.waiting[0]
        after = self.lifo_after
        if after is None or now is None or first in self._interactive:
            return first
        return self.waiting[-1] if now - self._since.get(first, now) >= after else first

    def _leave(self, workflow: str) -> None:
        """``workflow`` leaves the queue (admitted, or :meth:`forget`). The admitted one is
        at an end of the queue (the first, or the newest under adaptive LIFO): no scan."""
        if workflow in self._queued:
            if self.waiting[0] == workflow:
                self.waiting.popleft()
            elif self.waiting[-1] == workflow:
                self.waiting.pop()
            else:
                self.waiting.remove(workflow)
            self._queued.discard(workflow)
        self._interactive.discard(workflow)
        self._since.pop(workflow, None)

    def behind(self, workflow: str, now: float | None = None) -> Admission | None:
        """A deferral if ``workflow`` is queued and not the next to admit, else None."""
        if workflow not in self._queued or self.head(now) == workflow:
            return None
        key = (len(self.waiting), self.retry_after)
        answer = self._behind.get(key)
        if answer is None:
            answer = self._behind[key] = Admission(
                "defer", f"memory gate: not first of {key[0]} queued workflows", key[1]
            )
        return answer

    def _insert_interactive(self, workflow: str) -> None:
        self._interactive.add(workflow)
        index = sum(1 for w in self.waiting if w in self._interactive)
        self.waiting.insert(index, workflow)

    def forget(self, workflow: str) -> None:
        """A workflow left the queue some other way (rejected)."""
        self._leave(workflow)

    def __post_init__(self) -> None:
        self._interactive: set[str] = set()
        self._queued: set[str] = set()  # members of `waiting`, for O(1) lookups
        self._since: dict[str, float] = {}  # when each queued workflow first asked
