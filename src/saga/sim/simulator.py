"""The discrete-event simulator: workflows issuing calls to a cluster of replicas.

One process per workflow issues each call when the calls in its ``after`` list
have finished and its tool gap has passed; the policy places the call, the
replica's engine model serves it, and the policy decides what its KV does next.
Everything runs on the simulated clock of an :class:`~saga.engine.events.EventLoop`,
with a seeded random generator, so a seed gives the same result every time.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from saga.core.blocks import common_blocks
from saga.core.context import describe_over, over_context
from saga.core.workflow import HUMAN_TOOL, Call, Workflow
from saga.engine.cluster import ClusterSpec
from saga.engine.contention import HostShare
from saga.engine.driver import ReplicaDriver
from saga.engine.events import EventLoop
from saga.engine.kvcache import Run
from saga.engine.replica import Replica, Request, output_run
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.view import ReplicaView
from saga.sim.faults import Fault, check_faults
from saga.sim.fold_barrier import BarrierHooks, PendingFolds
from saga.sim.synced import SyncedReplica

GC_THRESHOLDS = (100_000, 50, 100)
"""The cyclic collector's thresholds while a simulation runs (``gc.set_threshold``):
measured on ``benchmarks/sim_speed.py --gpus 1024 --duration 300`` (docs/engine.md)."""


@dataclass(slots=True)
class CallRecord:
    """What happened to one call (times are simulated seconds)."""

    workflow: str
    call_id: str
    replica: int
    ready_at: float
    scheduled_at: float
    first_token_at: float
    finished_at: float
    prompt_tokens: int
    cached_tokens: int
    host_tokens: int
    recomputed_tokens: int
    output_tokens: int
    preemptions: int
    gpu_missed_tokens: int = 0
    #: of those, the tokens the placement gave up: the call ran on another replica than the
    #: one its predecessor left them on, which still held them when the call was placed
    placement_missed_tokens: int = 0


@dataclass(slots=True)
class WorkflowRecord:
    """What happened to one workflow. ``finished_at`` is -1 if it never finished."""

    workflow: str
    tenant: str
    agent: str
    arrival: float
    started_at: float
    finished_at: float
    calls: int
    slo: float | None
    rejected: str = ""
    #: calls longer than the model's context (vLLM answers them 400): the workflow is
    #: rejected at arrival and never simulated
    over_context: int = 0

    @property
    def tct(self) -> float:
        """Task completion time: end of the last call minus arrival."""
        return self.finished_at - self.arrival


@dataclass(slots=True)
class ReplicaRecord:
    index: int
    capacity_blocks: int
    busy_block_seconds: float
    reused_idle_block_seconds: float
    busy_seconds: float
    steps: int
    evicted_blocks: int
    prompt_tokens: int
    cached_tokens: int
    recomputed_tokens: int
    output_tokens: int
    #: of busy_block_seconds: held while recomputing, or holding KV a preemption discarded
    wasted_block_seconds: float = 0.0
    window_busy_seconds: float = 0.0  # seconds stepping a batch within the arrival window


@dataclass(slots=True)
class SimResult:
    """Raw records of one run; :mod:`saga.metrics` turns them into figures."""

    policy: str
    cluster: str
    seed: int
    workflows: list[WorkflowRecord]
    calls: list[CallRecord]
    replicas: list[ReplicaRecord]
    start: float
    end: float
    events: int
    kv_timeline: list[tuple[float, float]] = field(default_factory=list)
    #: first and last arrival of an open-loop run ((0, 0) for a closed loop)
    arrival_window: tuple[float, float] = (0.0, 0.0)


class RunWatch(Protocol):
    """Sees each workflow's record when it arrives, is rejected or finishes, while the run
    goes on; it may schedule events of its own and halt the loop (a capacity probe stops
    once its verdict is certain: saga.bench.early_verdict). It reads, never decides."""

    def arrived(self, record: WorkflowRecord, loop: EventLoop) -> None: ...

    def rejected(self, record: WorkflowRecord, loop: EventLoop) -> None: ...

    def finished(self, record: WorkflowRecord, loop: EventLoop) -> None: ...


class _WorkflowRun:
    """The process of one workflow: which calls wait on what."""

    __slots__ = (
        "done", "index", "info", "kv_runs", "last_issued", "pending", "record", "replicas",
        "successors", "waiting_on", "workflow",
    )

    def __init__(self, workflow: Workflow, record: WorkflowRecord) -> None:
        self.workflow = workflow
        self.record = record
        self.index = workflow.call_index()
        self.waiting_on = [len(c.after) for c in workflow.calls]
        self.successors = successors(workflow)
        self.pending = len(workflow.calls)
        self.done: list[bool] = [False] * len(workflow.calls)
        # the KV each finished call left: its prompt runs and its output's blocks
        self.kv_runs: list[tuple[Run, ...]] = [()] * len(workflow.calls)
        self.replicas: list[int] = [-1] * len(workflow.calls)  # where each finished call ran
        self.last_issued = 0.0  # when its latest call was issued (the gateway's last_seen)
        self.info = WorkflowInfo(
            workflow.id, workflow.tenant, workflow.agent, workflow.arrival, workflow.slo
        )


def prompt_runs(workflow: Workflow, call: Call) -> tuple[Run, ...]:
    """A call's keyed KV blocks as runs: shared prefixes, then workflow blocks."""
    bt = workflow.block_tokens
    runs: list[Run] = [("s:" + name, 0, -(-tokens // bt)) for name, tokens in call.prompt.shared]
    namespace = "w:" + workflow.id
    runs.extend((namespace, first, count) for first, count in call.prompt.blocks)
    return tuple(runs)


def successors(workflow: Workflow) -> list[list[int]]:
    """Per call, the later calls whose ``after`` names its id, in order (what each call
    releases when it finishes, and what its response leads to), built once per workflow
    rather than by scanning the later calls at every call."""
    calls = workflow.calls
    where: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        where.setdefault(call.id, []).append(i)
    out: list[list[int]] = [[] for _ in calls]
    for j, call in enumerate(calls):
        for name in dict.fromkeys(call.after):
            for i in where.get(name, ()):
                if i < j:
                    out[i].append(j)
    return out


class Simulation(ReplicaDriver):
    """One run of one policy on one cluster and one set of workflows."""

    def __init__(
        self,
        cluster: ClusterSpec,
        policy: Policy,
        workflows: Sequence[Workflow],
        *,
        seed: int = 0,
        closed_loop: int | None = None,
        progress: Callable[[float], None] | None = None,
        kv_sample_interval: float = 0.0,
        faults: Sequence[Fault] = (),
        end_idle_timeout: float | None = None,
        watch: RunWatch | None = None,
    ) -> None:
        if not workflows:
            raise ValueError("no workflows to simulate")
        block_sizes = {w.block_tokens for w in workflows}
        if len(block_sizes) != 1:
            raise ValueError(f"workflows mix block sizes {sorted(block_sizes)}; use one")
        self.block_tokens = block_sizes.pop()
        self.cluster = cluster
        #: seconds without a call after which a workflow with no end marker is seen ended
        self.end_idle_timeout = (
            cluster.end_idle_timeout if end_idle_timeout is None else end_idle_timeout
        )
        self.policy = policy
        self.seed = seed
        super().__init__(EventLoop(), cluster.replicas)
        self.rng = random.Random(seed)
        self.cost = cluster.cost_model()
        #: the model's window (0: none known); longer calls are rejected, never served
        self.max_context = self.cost.model.max_context
        capacity = cluster.kv_capacity_blocks(self.block_tokens)
        host_capacity = cluster.host_capacity_blocks(self.block_tokens)
        self.replicas: list[Replica] = []
        #: folded runs whose boundaries the policy's hooks must not overtake (keyed orders)
        self._pending = PendingFolds(cluster.replicas)
        barrier_hooks = BarrierHooks(policy, self._pending)
        for i in range(cluster.replicas):
            replica = Replica(
                i,
                cluster.engine,
                self.cost,
                policy,
                block_tokens=self.block_tokens,
                capacity_blocks=capacity,
                host_capacity_blocks=host_capacity,
                eviction=policy.eviction_order(i),
            )
            replica.fold_boundaries = True
            self.replicas.append(replica)
        # Folded block boundaries need every reader to sync the replica first: under
        # static eviction orders the policy reads it through SyncedReplica and the
        # simulator calls sync itself. Under a keyed one (the policy's state ranks the
        # blocks) every folded boundary is also applied before any hook that may change
        # that state (sim/fold_barrier.py); then a hook sees every replica up to date and
        # reads them directly, so every replica is under the barrier.
        if any(not r.kv.eviction.static for r in self.replicas):
            for replica in self.replicas:
                replica.fold_under_hooks = True
                replica.hooks = barrier_hooks
        if cluster.host_contention > 0:
            share = HostShare(self.replicas, cluster.host_contention)
            for replica in self.replicas:
                replica.share_host(share)
        views: Sequence[ReplicaView] = (
            self.replicas if any(r.fold_under_hooks for r in self.replicas)
            else [SyncedReplica(r, self.loop) for r in self.replicas]
        )
        policy.bind(PolicyContext(
            replicas=views, cost=self.cost, block_tokens=self.block_tokens, rng=self.rng
        ))
        #: blocks of the largest replica (fixed): an arrival larger than that is refused
        self._largest_kv = max(r.kv.capacity for r in self.replicas)
        self.workflows = list(workflows)
        self.closed_loop = closed_loop
        self._progress = progress
        self._horizon = max(w.arrival for w in workflows) or 1.0
        self._window = (
            (0.0, 0.0) if closed_loop
            else (min(w.arrival for w in workflows), max(w.arrival for w in workflows))
        )
        for replica in self.replicas:
            replica.busy_window = self._window
        self._records: list[WorkflowRecord] = []
        self._calls: list[CallRecord] = []
        self._seq = 0
        self._kv_interval = kv_sample_interval
        self._kv_timeline: list[tuple[float, float]] = []
        self._next_closed = 0
        self._owners: dict[int, tuple[_WorkflowRun, int]] = {}  # request seq -> its call
        # request seq -> (the replica its predecessor's KV is on, blocks of its reusable
        # prefix that replica still held when the call was placed elsewhere)
        self._left_behind: dict[int, tuple[int, int]] = {}
        self.faults = check_faults(faults, cluster.replicas)
        self._parked: list[Request] = []  # ready while no replica was up
        self.watch = watch

    # ---- running ------------------------------------------------------------------------
    def run(self) -> SimResult:
        if self.closed_loop:
            count = min(self.closed_loop, len(self.workflows))
            for _ in range(count):
                self._start_next_closed(0.0)
        else:
            for workflow in self.workflows:
                self.loop.at(workflow.arrival, self._arrive, workflow)
        if self._kv_interval > 0:
            self.loop.at(0.0, self._sample_kv)
        for fault in self.faults:
            self.loop.at(fault.at, self._fail, fault.replica)
            self.loop.at(fault.until, self._recover, fault.replica)
        # A run allocates millions of short-lived objects and keeps every call's records:
        # at the default threshold the cyclic collector runs every 700 allocations and
        # its full passes walk all that is kept. Rarer young collections change no
        # decision (nothing ranks by allocation: the cache's ids break no real tie).
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            self.loop.run(on_event=self._report_progress if self._progress else None)
        finally:
            gc.set_threshold(*thresholds)
        return self._result()

    def _report_progress(self) -> None:
        assert self._progress is not None
        self._progress(self.loop.now)

    def _start_next_closed(self, now: float) -> None:
        if self._next_closed >= len(self.workflows):
            return
        workflow = self.workflows[self._next_closed].with_arrival(now)
        self._next_closed += 1
        self.loop.at(now, self._arrive, workflow)

    # ---- workflow process --------------------------------------------------------------
    def _arrive(self, workflow: Workflow) -> None:
        record = WorkflowRecord(
            workflow.id, workflow.tenant, workflow.agent, workflow.arrival, -1.0, -1.0,
            len(workflow.calls), workflow.slo,
        )
        run = _WorkflowRun(workflow, record)
        if self.watch is not None:
            self.watch.arrived(record, self.loop)
        over = over_context(workflow, self.max_context)
        if over:
            # vLLM answers such a call 400: the workflow cannot complete as recorded.
            record.over_context = len(over)
            record.rejected = "over context: " + describe_over(
                workflow, over[0], self.max_context, self.cluster.model
            )
        too_large = record.rejected or self._too_large(workflow)
        if too_large:
            # As vLLM refuses a request longer than its KV can ever hold: the workflow
            # could never finish, so it is rejected at once, with the reason on record.
            self._records.append(record)
            record.rejected = too_large
            if self.watch is not None:
                self.watch.rejected(record, self.loop)
            if self.closed_loop:
                self._start_next_closed(self.loop.now)
            return
        self._admit(run)

    def _too_large(self, workflow: Workflow) -> str:
        """Why no replica could ever serve one of ``workflow``'s calls ("" if all fit)."""
        capacity = self._largest_kv
        for call in workflow.calls:
            need = -(-(call.prompt.tokens + call.output_tokens) // self.block_tokens)
            if need > capacity:
                return (
                    f"call {call.id} needs {need} KV blocks ({call.prompt.tokens:,} prompt + "
                    f"{call.output_tokens:,} output tokens); a replica holds {capacity}"
                )
        return ""

    def _admit(self, run: _WorkflowRun) -> None:
        now = self.loop.now
        self._pending.sync_due(now)
        decision = self.policy.admit(run.info, now)
        if decision.verdict == "defer":
            self.loop.after(max(decision.retry_after, 1e-3), self._admit, run)
            return
        self._records.append(run.record)
        if decision.verdict == "reject":
            run.record.rejected = decision.reason or "rejected"
            if self.watch is not None:
                self.watch.rejected(run.record, self.loop)
            if self.closed_loop:
                self._start_next_closed(now)
            return
        run.record.started_at = now
        for i, call in enumerate(run.workflow.calls):
            if not call.after:
                self.loop.after(call.gap, self._call_ready, (run, i))

    def _call_ready(self, item: tuple[_WorkflowRun, int]) -> None:
        run, i = item
        now = self.loop.now
        workflow = run.workflow
        call = workflow.calls[i]
        run.last_issued = now
        last = run.pending == 1
        later = run.successors[i]
        gaps = [workflow.calls[j].gap for j in later]
        # the tool the call's response invokes, as the response shows it: none if the turn
        # ended, whether a human's message follows or nothing does
        following = workflow.calls[later[0]] if later else None
        next_tool = None if following is None or following.tool == HUMAN_TOOL else following.tool
        info = CallInfo(
            workflow=workflow.id,
            tenant=workflow.tenant,
            agent=workflow.agent,
            call_id=call.id,
            index=i,
            tool=call.tool,
            prompt_tokens=call.prompt.tokens,
            runs=prompt_runs(workflow, call),
            issued_at=now,
            workflow_arrival=workflow.arrival,
            slo=workflow.slo,
            # the client's end marker: only a client that sends one gives it
            ends_workflow=last and workflow.end_signal == "explicit",
            output_tokens=call.output_tokens,
            next_gap=min(gaps) if gaps else None,
            after=call.after,
            next_tool=next_tool,
            next_runs=prompt_runs(workflow, workflow.calls[later[0]]) if later else None,
            oracle_last_call=last,
            # what the response shows: it invoked a tool (the next call follows a tool)
            # or ended the turn (a human's message or nothing follows; a real response
            # does not tell which)
            turn_ended=next_tool is None,
        )
        self._pending.sync_due(now)
        self.policy.on_call_ready(info, now)
        self._seq += 1
        request = Request(
            workflow.id, call.id, info.runs, call.prompt.tokens, call.output_tokens,
            self.block_tokens, self._seq, info=info,
        )
        request.reusable_blocks, home = self._reuse(run, i, request)
        self._owners[self._seq] = (run, i)
        if home >= 0:
            self._left_behind[self._seq] = (home, 0)
        self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        """Place a call and queue it there (or park it while no replica is up)."""
        now = self.loop.now
        info = request.info
        assert info is not None
        if self.faults and not any(r.up for r in self.replicas):
            self._parked.append(request)
            return
        self._pending.sync_due(now)
        replica = self.replicas[self.policy.place(info, now)]
        left = self._left_behind.get(request.seq)
        if left is not None and left[0] != replica.index:
            home = self.replicas[left[0]]
            home.sync(now)
            kept = home.kv.match_blocks(request.runs)
            self._left_behind[request.seq] = (left[0], min(kept, request.reusable_blocks))
        replica.enqueue(request, now)
        self._kick(replica)

    def _planned(self, replica: Replica, now: float, end: float) -> None:
        if replica.fold_under_hooks and replica.folded:
            self._pending.add(replica)

    # ---- faults (saga.sim.faults) ---------------------------------------------------------
    def _fail(self, index: int) -> None:
        """The replica dies: what it held is placed again, as recompute."""
        for request in self.replicas[index].fail(self.loop.now):
            self._dispatch(request)

    def _recover(self, index: int) -> None:
        """The replica is back, empty; calls parked while none was up are placed."""
        self.replicas[index].up = True
        parked, self._parked = self._parked, []
        for request in parked:
            self._dispatch(request)

    def _reuse(self, run: _WorkflowRun, i: int, request: Request) -> tuple[int, int]:
        """(blocks of the call's reusable prefix: what it shares with the KV its
        predecessors left, or a named shared prefix; the replica that ran the predecessor
        whose KV it shares most of, -1 for a first call or one that shares nothing with
        its predecessors), with one prefix walk per predecessor."""
        runs = request.runs
        reusable = sum(r[2] for r in runs if r[0].startswith("s:"))
        best, home = 0, -1
        for a in run.workflow.calls[i].after:
            j = run.index[a]
            common = common_blocks(runs, run.kv_runs[j])
            if common > reusable:
                reusable = common
            if common > best:
                best, home = common, run.replicas[j]
        return reusable, home

    def _placement_missed(self, request: Request, missed: int) -> int:
        """Of the call's ``missed`` tokens, those its placement gave up: still on its
        predecessor's replica when the call was placed on another one."""
        _, kept = self._left_behind.pop(request.seq, (-1, 0))
        kept_tokens = min(kept * self.block_tokens, request.prompt_tokens - 1)
        return min(missed, max(0, kept_tokens - request.cached_tokens))

    def _reusable_missed(self, request: Request) -> int:
        """Tokens of the call's reusable prefix (what it shares with the KV its
        predecessors left) that were not on the GPU when it was scheduled."""
        # as _call_ready counted it: the predecessors' KV runs are set before it is ready
        reusable = request.reusable_blocks
        reusable_tokens = min(reusable * self.block_tokens, request.prompt_tokens - 1)
        return max(0, reusable_tokens - request.cached_tokens)

    def _call_done(self, replica: Replica, request: Request) -> None:
        now = self.loop.now
        run, i = self._owners.pop(request.seq)
        info = request.info
        assert info is not None
        missed = self._reusable_missed(request)
        moved = self._placement_missed(request, missed)
        out = output_run(request, self.block_tokens)
        run.kv_runs[i] = request.runs + ((out,) if out is not None else ())
        run.replicas[i] = replica.index
        self._calls.append(
            CallRecord(
                request.workflow, request.call_id, replica.index, info.issued_at,
                request.scheduled_at, request.first_token_at, now, request.prompt_tokens,
                request.cached_tokens, request.host_tokens,
                max(0, missed - request.host_tokens) + request.recomputed_tokens,
                request.generated, request.preemptions, missed, moved,
            )
        )
        self._pending.sync_due(now)
        self.policy.on_call_finished(info, replica.index, now)
        run.done[i] = True
        run.pending -= 1
        workflow = run.workflow
        for j in run.successors[i]:
            run.waiting_on[j] -= 1
            if run.waiting_on[j] == 0:
                self.loop.after(workflow.calls[j].gap, self._call_ready, (run, j))
        if run.pending == 0:
            run.record.finished_at = now  # the metrics' truth: TCT ends here
            if self.watch is not None:
                self.watch.finished(run.record, self.loop)
            if workflow.end_signal == "explicit":
                self._pending.sync_due(now)
                self.policy.on_workflow_finished(run.info, now)  # the marked call is done
            else:
                # As the gateway's sweep sees it: no call in flight and none issued for
                # the idle timeout. A background event: it never prolongs the run.
                seen = max(run.last_issued + self.end_idle_timeout, now)
                self.loop.at_background(seen, self._idle_end, run)
            if self.closed_loop:
                self._start_next_closed(now)

    def _idle_end(self, run: _WorkflowRun) -> None:
        """The idle timeout of a workflow without an end marker has passed: every policy
        learns now that it ended."""
        self._pending.sync_due(self.loop.now)
        self.policy.on_workflow_finished(run.info, self.loop.now)

    def _sample_kv(self, _: object) -> None:
        now = self.loop.now
        for replica in self.replicas:
            replica.sync(now)
        used = sum(r.kv.used_blocks / max(r.kv.capacity, 1) for r in self.replicas)
        self._kv_timeline.append((self.loop.now, used / len(self.replicas)))
        if self.loop.pending() > 0:
            self.loop.after(self._kv_interval, self._sample_kv)

    # ---- results ----------------------------------------------------------------------------
    def _result(self) -> SimResult:
        now = self.loop.now
        for replica in self.replicas:
            replica.sync(now)
            replica.drain_pins(now)
            replica.kv.tick(now)
        records = []
        for r in self.replicas:
            records.append(
                ReplicaRecord(
                    r.index, r.kv.capacity, r.kv.busy_block_seconds,
                    r.kv.reused_idle_block_seconds, r.busy_seconds, r.steps,
                    r.kv.evicted_blocks, r.prompt_tokens_total, r.cached_tokens_total,
                    r.recomputed_tokens_total, r.output_tokens_total,
                    r.kv.recompute_block_seconds + r.kv.discarded_block_seconds,
                    r.window_busy_seconds,
                )
            )
        start = min((w.arrival for w in self._records), default=0.0)
        return SimResult(
            policy=self.policy.name,
            cluster=self.cluster.name,
            seed=self.seed,
            workflows=sorted(self._records, key=lambda w: (w.arrival, w.workflow)),
            calls=self._calls,
            replicas=records,
            start=start,
            end=now,
            events=self.loop.events_run,
            kv_timeline=self._kv_timeline,
            arrival_window=self._window,
        )

