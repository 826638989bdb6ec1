"""SAGA's routing decisions over Ray Serve replicas, free of Ray (tested on fakes).

:class:`SagaRouting` owns one policy from the registry (``saga`` by default), bound to
:class:`~.view.RayReplicaView` slots, and answers Ray Serve's one question -- which
replicas may take this request, best first -- with a :class:`Tiers` decision:

1. the replica the policy places the call on (the workflow's home, unless the policy
   steals it: :meth:`saga.sched.saga.policy.SagaPolicy.place`);
2. work-stealing candidates: the other replicas that are up and less loaded than it;
3. the rest.

Ray Serve tries the tiers in order and, within one, the replica with the shortest queue
that accepts. A workflow's first call is first *admitted*: while the policy defers it
(SAGA's SLO admission and memory gate) the answer is :class:`Held` -- Ray Serve's
router backs off and asks again -- so the request waits in the router, never at a
replica. Among held workflows, the one first in Agent Fair Share order (its tenant's
normalized service, then how long it has waited) asks the policy first; the others
wait behind it.

Retention: when a call ends, the policy decides what becomes of its KV on that replica
(:meth:`SagaRouting.completed`, weighing the blocks of the prompt as estimated: the
router does not see the answer's usage). With replicas that carry it out (``retains``:
vLLM), a ``pin`` is remembered and rides the workflow's next call as a TTL hint for that
replica (:attr:`RayCall.ttl_hints`), which the replica hands to its engine (``saga_ttl``
to vLLM, :mod:`.vllm`); other decisions forget it.

Shared state comes in as a :class:`SharedSession` (from :mod:`.state`): a workflow
admitted by another router replica is not gated again, and a workflow whose last call
another router placed has that home adopted before placement, so that two router
replicas keep one home per workflow.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from saga.engine.cluster import get_cluster
from saga.gateway.view import GatewayCall
from saga.gateway.workflow_state import WorkflowState
from saga.integrations.ray.call import RayCall
from saga.integrations.ray.view import RayReplicaView, ReplicaStats
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.registry import build_policy
from saga.sched.saga.policy import SagaPolicy
from saga.wire.token_scale import TokenScale


@dataclass(frozen=True, slots=True)
class Held:
    """No replica yet: ask again after ``retry_after`` seconds."""

    reason: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class Tiers:
    """Replica ids, best tier first; ``slot`` is the policy's own choice."""

    ranks: list[list[str]]
    slot: int


@dataclass(frozen=True, slots=True)
class SharedSession:
    """What the router replicas agree on about one workflow (from the state actor)."""

    home: str | None = None  # the Ray replica id of its home
    admitted: bool = False


@dataclass(slots=True)
class _Routed:
    info: CallInfo
    call: RayCall
    tiers: Tiers
    slot: int | None = None
    record: GatewayCall | None = None


@dataclass(slots=True)
class _HeldWorkflow:
    info: WorkflowInfo
    since: float
    last_asked: float
    queued: bool = False  # whether the policy's admission queue holds it


@dataclass(slots=True)
class RoutingStats:
    """Counters a benchmark reads."""

    routed: int = 0
    held: int = 0
    steals: int = 0
    adopted: int = 0  # homes taken from the shared state
    pins: int = 0  # retention decisions that pinned a workflow's KV
    hinted: int = 0  # calls sent with a TTL hint
    tenant_service: dict[str, float] = field(default_factory=dict)


class SagaRouting:
    """One router replica's policy and its view of the Serve replicas."""

    def __init__(
        self, policy: str = "saga", *, slots: int = 2, cluster: str = "small",
        block_tokens: int = 64, held_ttl: float = 5.0, workflow_idle_timeout: float = 300.0,
        hold_retry: float = 0.02, max_hints: int = 65536, retains: bool = False,
        learn_token_scale: bool = True,
    ) -> None:
        self.policy: Policy = build_policy(policy)
        if self.policy.offline:
            raise ValueError(f"policy {policy!r} reads the future; a router cannot run it")
        spec = get_cluster(cluster)
        cost = spec.cost_model()
        capacity = spec.kv_capacity_blocks(block_tokens)
        block_bytes = cost.model.kv_bytes_per_token() * block_tokens
        self.block_tokens = block_tokens
        self.views = [
            RayReplicaView(i, capacity, block_tokens, block_bytes,
                           max_num_batched_tokens=spec.engine.max_num_batched_tokens)
            for i in range(slots)
        ]
        #: The engines' tokens per estimated token, from the replicas' reports of the calls
        #: they answered (None: off, the plain estimate), as the gateway learns it.
        self.token_scale = TokenScale() if learn_token_scale else None
        self._answered: dict[str, tuple[int, int]] = {}  # replica id -> its report's totals
        if self.token_scale is not None:
            for view in self.views:
                view.use_token_scale(self.token_scale)
        self.policy.bind(PolicyContext(replicas=self.views, cost=cost,
                                       block_tokens=block_tokens, rng=random.Random(0)))
        self.slot_of: dict[str, int] = {}
        self.workflows: dict[str, WorkflowState] = {}
        self.held: dict[str, _HeldWorkflow] = {}
        self.routed: dict[str, _Routed] = {}
        self.held_ttl = held_ttl
        self.hold_retry = hold_retry
        self.idle_timeout = workflow_idle_timeout
        self.stats = RoutingStats()
        self._seq = 0
        #: Pins the policy decided, not yet sent: workflow -> (Ray replica id, TTL s);
        #: the oldest forgotten first beyond ``max_hints``.
        self.ttl_hints: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.max_hints = max_hints
        #: Whether the replicas carry out a pin (vLLM: ``saga_ttl``); if not (emulator
        #: replicas), the decision is made -- the policy learns from it -- and recorded
        #: on no blocks, never sent.
        self.retains = retains
        #: What the other router replicas admitted (from the shared state): SAGA's memory
        #: gate counts it beside this router's own working set.
        self.remote_working_set = 0.0
        if isinstance(self.policy, SagaPolicy):
            saga = self.policy
            setattr(saga, "_working_set",  # noqa: B010 (an instance's override)
                    lambda: SagaPolicy._working_set(saga) + self.remote_working_set)
        #: Called with (tenant, seconds) when the policy charges a tenant (shared).
        self.on_charge: Callable[[str, float], None] | None = None

    def local_working_set(self) -> float:
        """Context tokens this router's admitted workflows hold or are expected to bring."""
        if isinstance(self.policy, SagaPolicy):
            return SagaPolicy._working_set(self.policy)
        return 0.0

    # ---- replicas --------------------------------------------------------------------
    def update_replicas(self, replica_ids: Sequence[str]) -> None:
        """The replicas Ray Serve lists now: new ones take a free slot (a dead one's, if
        none is free); the others' slots go down."""
        live = set(replica_ids)
        for rid, slot in list(self.slot_of.items()):
            if rid not in live:
                self.views[slot].up = False
        for rid in sorted(live - self.slot_of.keys()):
            free = [v for v in self.views if v.replica_id is None] or \
                   [v for v in self.views if not v.up]
            if not free:
                continue  # more replicas than slots: the extra ones are not routed to
            view = free[0]
            if view.replica_id is not None:
                self.slot_of.pop(view.replica_id, None)
            view.bind(rid)
            self.slot_of[rid] = view.index
        for rid in live & self.slot_of.keys():
            self.views[self.slot_of[rid]].up = True

    def replica_died(self, replica_id: str) -> None:
        """Ray found the replica dead before listing it gone: route around it now."""
        slot = self.slot_of.get(replica_id)
        if slot is not None:
            self.views[slot].up = False

    def report(self, replica_id: str, stats: ReplicaStats) -> None:
        slot = self.slot_of.get(replica_id)
        if slot is not None:
            self.views[slot].report(stats)
        if self.token_scale is not None and stats.engine_tokens > 0:
            # each replica reports its own running totals: the scale is their sum
            self._answered[replica_id] = (stats.estimated_tokens, stats.engine_tokens)
            self.token_scale.assign(sum(e for e, _ in self._answered.values()),
                                    sum(n for _, n in self._answered.values()))

    def home_id(self, workflow: str) -> str | None:
        """The Ray replica id of the slot this router last placed ``workflow`` on."""
        wf = self.workflows.get(workflow)
        if wf is None or wf.placed_here is None:
            return None
        return self.views[wf.placed_here].replica_id

    def knows_home(self, workflow: str) -> bool:
        """Whether this router placed the workflow's last call (its state is current)."""
        wf = self.workflows.get(workflow)
        return wf is not None and wf.placed_here is not None

    # ---- the decision ----------------------------------------------------------------
    def route(
        self, request_id: str, call: RayCall, now: float, shared: SharedSession | None = None,
    ) -> Held | Tiers:
        """Which replicas may take ``call`` (asked again until one does: the answer for a
        request is decided once and repeated)."""
        known = self.routed.get(request_id)
        if known is not None:
            if self.views[known.tiers.slot].up:
                return known.tiers
            return self._replace(known, now)  # its replica died before taking it
        shared = shared or SharedSession()
        wf = self.workflows.get(call.workflow)
        if wf is None:
            wf = WorkflowState(WorkflowInfo(call.workflow, call.tenant, call.agent, now, None))
            self.workflows[call.workflow] = wf
        wf.last_seen = now
        if not (wf.admitted or shared.admitted):
            held = self._admit(wf, now)
            if held is not None:
                self.stats.held += 1
                return held
        wf.admitted = True
        scale = self.token_scale
        info = CallInfo(
            workflow=call.workflow, tenant=call.tenant, agent=call.agent,
            call_id=str(wf.calls), index=wf.calls, tool=call.tool,
            prompt_tokens=scale.tokens(call.prompt_tokens) if scale is not None
            else call.prompt_tokens, runs=call.runs, issued_at=now,
            workflow_arrival=wf.info.arrival, slo=None, ends_workflow=call.ends,
        )
        wf.calls += 1
        self.policy.on_call_ready(info, now)
        if shared.home is not None and shared.home in self.slot_of:
            home = self.slot_of[shared.home]
            if home != wf.placed_here and self.views[home].up:
                self._adopt(info, home)
                self.stats.adopted += 1
        try:
            slot = self.policy.place(info, now)
        except RuntimeError as error:  # no replica up: Ray waits for one
            return Held(str(error), self.hold_retry)
        tiers = Tiers(self._ranks(slot), slot)
        self.routed[request_id] = _Routed(info, call, tiers)
        hint = self.ttl_hints.pop(call.workflow, None)
        if hint is not None:  # the replica holding the pin applies it (if it takes the call)
            call.ttl_hints = {hint[0]: hint[1]}
            self.stats.hinted += 1
        wf.in_flight += 1
        wf.placed_here = slot
        self.stats.routed += 1
        return tiers

    def _replace(self, routed: _Routed, now: float) -> Held | Tiers:
        try:
            slot = self.policy.place(routed.info, now)
        except RuntimeError as error:
            return Held(str(error), self.hold_retry)
        routed.tiers = Tiers(self._ranks(slot), slot)
        wf = self.workflows.get(routed.info.workflow)
        if wf is not None:
            wf.placed_here = slot
        return routed.tiers

    def _admit(self, wf: WorkflowState, now: float) -> Held | None:
        name = wf.info.workflow
        entry = self.held.get(name)
        if entry is None:
            entry = self.held[name] = _HeldWorkflow(wf.info, now, now)
        entry.last_asked = now
        self._forget_gone_held(now)
        first = min(self.held.values(), key=lambda h: self._fair_key(h, now))
        if first is not entry:
            return Held(f"behind {first.info.workflow} in Agent Fair Share order",
                        self.hold_retry)
        # The policy's own admission queue is first come first served; in front of it,
        # the line is in fair-share order: only the first held workflow stands in it.
        for other in self.held.values():
            if other.queued and other is not entry:
                other.queued = False
                self.policy.on_admission_withdrawn(other.info, now)
        entry.queued = True
        decision = self.policy.admit(wf.info, now)
        if decision.verdict == "admit":
            del self.held[name]
            return None
        if decision.verdict == "reject":
            del self.held[name]
            raise PermissionError(f"workflow rejected: {decision.reason}")
        return Held(decision.reason or "deferred", min(decision.retry_after, self.hold_retry))

    def _fair_key(self, held: _HeldWorkflow, now: float) -> tuple[float, float, float]:
        """Agent Fair Share among held workflows: the tenant's normalized service, then
        the longest wait first (no work is predicted yet for a workflow not started)."""
        policy = self.policy
        if isinstance(policy, SagaPolicy):
            service, aged = policy.fair.key(held.info.tenant, 0.0, now - held.since)
            return (service, aged, held.since)
        return (0.0, 0.0, held.since)

    def _forget_gone_held(self, now: float) -> None:
        """Held workflows that stopped asking (their client left) leave the line."""
        for name, held in list(self.held.items()):
            if now - held.last_asked > self.held_ttl:
                del self.held[name]
                self.policy.on_admission_withdrawn(held.info, now)

    def _adopt(self, info: CallInfo, home: int) -> None:
        """Make ``home`` (where another router placed the workflow) the policy's home for
        it, so that placement decides between it and stealing with current state."""
        policy = self.policy
        if isinstance(policy, SagaPolicy):
            flow = policy.flows.get(info.workflow)
            if flow is not None and flow.home != home:
                policy._rehome(flow, home, max(flow.context, info.prompt_tokens))

    def _ranks(self, slot: int) -> list[list[str]]:
        chosen = self.views[slot]
        others = sorted((v for v in self.views if v.up and v is not chosen and v.replica_id),
                        key=lambda v: (v.load(), v.index))
        steal = [v.replica_id for v in others if v.load() < chosen.load()]
        rest = [v.replica_id for v in others if v.load() >= chosen.load()]
        ranks = [[chosen.replica_id]] if chosen.replica_id else []
        ranks += [[r for r in tier if r is not None] for tier in (steal, rest) if tier]
        return ranks

    # ---- what happened -----------------------------------------------------------------
    def sent(self, request_id: str, replica_id: str, now: float) -> None:
        """Ray Serve sent the request to ``replica_id`` (maybe not the policy's choice)."""
        routed = self.routed.get(request_id)
        slot = self.slot_of.get(replica_id)
        if routed is None or slot is None:
            return
        routed.slot = slot
        if slot != routed.tiers.slot:
            self.stats.steals += 1
            self._adopt(routed.info, slot)
            wf = self.workflows.get(routed.info.workflow)
            if wf is not None:
                wf.placed_here = slot
        self._seq += 1
        factor = self.token_scale.factor if self.token_scale is not None else 1.0
        record = GatewayCall(routed.info, routed.call.max_tokens, self.block_tokens,
                             self._seq, now, factor)
        view = self.views[slot]
        view.try_start(record, now)
        view.kv.add(routed.info.runs)
        routed.record = record

    def completed(self, request_id: str, now: float) -> str | None:
        """The request ended (answered or failed) on the replica it was sent to; the
        workflow's name if that was its last call."""
        routed = self.routed.pop(request_id, None)
        if routed is None:
            return None
        info = routed.info
        wf = self.workflows.get(info.workflow)
        if wf is not None:
            wf.in_flight -= 1
        if routed.slot is None or routed.record is None:
            return None
        view = self.views[routed.slot]
        view.finish(routed.record, now, lambda _: True)
        before = self._service(info.tenant)
        self.policy.on_call_finished(info, routed.slot, now)
        charged = self._service(info.tenant) - before
        if charged > 0 and self.on_charge is not None:
            self.on_charge(info.tenant, charged)
        if self.retains:
            routed.record.served(0)  # the KV it left: its prompt as estimated (no usage)
            decision = self.policy.retention(view, routed.record, now)
            view.note_retention(info.workflow, decision, now, routed.record)
            self._hint(info.workflow, view.replica_id, decision)
        else:  # nothing will hold the KV: the view counts no pinned blocks
            view.note_retention(info.workflow, self.policy.retention(view, routed.record, now),
                                now)
        if info.ends_workflow and wf is not None and wf.in_flight == 0:
            del self.workflows[info.workflow]
            self.policy.on_workflow_finished(wf.info, now)
            return info.workflow
        return None

    def _hint(self, workflow: str, replica_id: str | None, decision: Retention) -> None:
        """Remember a pin for the workflow's next call; any other decision forgets one."""
        if decision.kind == "pin" and decision.ttl > 0 and replica_id is not None:
            self.stats.pins += 1
            self.ttl_hints[workflow] = (replica_id, decision.ttl)
            self.ttl_hints.move_to_end(workflow)
            while len(self.ttl_hints) > self.max_hints:
                self.ttl_hints.popitem(last=False)
        else:
            self.ttl_hints.pop(workflow, None)

    def hand_over(self, workflow: str, now: float) -> None:
        """Another router replica placed (or ended) ``workflow``: its state is that
        router's now. This router forgets it -- its working set is counted there, not
        twice -- without teaching its graphs an end or its fair share a slowdown (the
        workflow goes on); a later call here reads the shared state again."""
        wf = self.workflows.get(workflow)
        if wf is None or wf.in_flight:
            return
        del self.workflows[workflow]
        self.ttl_hints.pop(workflow, None)  # its next call goes through the other router
        policy = self.policy
        if isinstance(policy, SagaPolicy):
            flow = policy.flows.get(workflow)
            if flow is not None:
                flow.node = ""  # no end observed
                flow.ideal = 0.0  # no slowdown recorded
        policy.on_workflow_finished(wf.info, now)

    def charge(self, tenant: str, seconds: float) -> None:
        """Service another router replica gave ``tenant`` (Agent Fair Share is global)."""
        if isinstance(self.policy, SagaPolicy):
            self.policy.fair.charge(tenant, seconds)

    def _service(self, tenant: str) -> float:
        if isinstance(self.policy, SagaPolicy):
            return self.policy.fair.account(tenant).service
        return 0.0

    def sweep(self, now: float) -> None:
        """Workflows idle longer than the timeout end (as at the gateway)."""
        for name, wf in list(self.workflows.items()):
            if wf.in_flight == 0 and now - wf.last_seen > self.idle_timeout:
                del self.workflows[name]
                self.ttl_hints.pop(name, None)
                self.policy.on_workflow_finished(wf.info, now)
        self._forget_gone_held(now)
