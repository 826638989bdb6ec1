"""The emulator's runtime: engine-model replicas driven in real time.

The replicas step as in the simulator (:class:`saga.engine.driver.ReplicaDriver`, the one
stepping loop both use), on a real-time event loop, with two additions for a live server:

* calls arrive from HTTP handlers (:meth:`Emulator.submit`) and report progress
  through an :class:`asyncio.Event` per call, so a handler can stream tokens;
* while a streaming call runs, decode runs are cut every ``stream_interval`` model
  seconds (:meth:`Replica.interrupt`, which changes nothing in the result), so that
  tokens reach the client at the modelled pace instead of in one burst.

Its scheduling hooks carry the gateway's hints: a call's priority (smaller first,
then arrival) and what to do with its KV when it finishes. The KV control verbs
(:meth:`Emulator.retain`) pin, offload or drop the KV a workflow's last call left.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from saga.engine.cluster import ClusterSpec
from saga.engine.driver import ReplicaDriver
from saga.engine.kvcache import Run
from saga.engine.replica import Replica, Request, output_run
from saga.sched.decisions import RELEASE, Retention

from .realtime import RealtimeEventLoop


@dataclass(slots=True)
class CallState:
    """One call in the emulator, as its HTTP handler sees it."""

    request: Request
    replica: int
    stream: bool
    priority: float = 0.0
    retention: Retention = RELEASE
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    arrived_at: float = 0.0


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """A call the emulator answered, timed on its model clock (model seconds).

    ``finished - arrived`` is the call's latency in the model alone: the time HTTP,
    a gateway and a busy machine add around it is not in it, which is what lets a test
    compare a live run with the simulator on a slow machine.
    """

    workflow: str
    replica: int
    arrived: float
    finished: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


class Emulator(ReplicaDriver):
    """``replicas`` engine-model replicas of ``cluster`` advancing in real time."""

    loop: RealtimeEventLoop

    @property
    def static_order(self) -> bool:
        """The queue key (priority, arrival, seq) of a call never changes."""
        return True

    def __init__(
        self,
        cluster: ClusterSpec,
        replicas: int | None = None,
        *,
        time_scale: float = 1.0,
        block_tokens: int = 64,
        stream_interval: float = 0.05,
        max_waiting: int = 4096,
        recent_calls: int = 1024,
        remembered_workflows: int = 4096,
    ) -> None:
        self.cluster = cluster
        self.max_waiting = max_waiting
        self.block_tokens = block_tokens
        self.stream_interval = stream_interval
        self.cost = cluster.cost_model()
        count = replicas if replicas is not None else cluster.replicas
        super().__init__(RealtimeEventLoop(time_scale), count)
        capacity = cluster.kv_capacity_blocks(block_tokens)
        host = cluster.host_capacity_blocks(block_tokens)
        self.replicas = [
            Replica(
                i, cluster.engine, self.cost, self, block_tokens=block_tokens,
                capacity_blocks=capacity, host_capacity_blocks=host,
            )
            for i in range(count)
        ]
        self.calls: dict[int, CallState] = {}
        # what the last finished call of each workflow left, per replica (for retain): the
        # ``remembered_workflows`` latest only, as the emulator may run for days; a retain
        # comes right after its call, so an older entry is one nobody asks for any more
        if remembered_workflows < 1:
            raise ValueError(f"remembered_workflows must be at least 1, not {remembered_workflows}")
        self.remembered_workflows = remembered_workflows
        self.last_kv: list[OrderedDict[str, tuple[Run, ...]]] = [
            OrderedDict() for _ in self.replicas
        ]
        self._cut_pending = [False] * count
        self._streaming = [0] * count
        self._seq = 0
        self.finished_calls = 0
        self.aborted_calls = 0
        # the last ``recent_calls`` answered calls (bounded: the emulator may run for days)
        self.recent: deque[FinishedCall] = deque(maxlen=recent_calls)

    # ---- hooks (saga.engine.replica.EngineHooks) ---------------------------------------
    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        state = self.calls.get(request.seq)
        priority = state.priority if state is not None else 0.0
        return (priority, request.enqueued_at, request.seq)

    def queue_keys(self, replica: Replica, now: float) -> Callable[[Request], tuple[float, ...]]:
        return lambda request: self.queue_key(replica, request, now)

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        state = self.calls.get(request.seq)
        return state.retention if state is not None else RELEASE

    def unpin_order(self, replica: Replica, now: float) -> list[str]:
        """Pins to give up under memory pressure: earliest expiry first."""
        pins = replica.pins
        return sorted(pins, key=lambda w: (pins[w].expires, w))

    def preempt_for(self, replica: Replica, waiting: Request, running: Request, now: float) -> bool:
        """The emulator preempts only for memory, as the engines it stands for."""
        return False

    def prefill_limit(self, replica: Replica, now: float) -> int | None:
        """The step's token budget alone, as the engines it stands for by default."""
        return None

    # ---- calls ----------------------------------------------------------------------------
    def submit(
        self,
        replica: int,
        workflow: str,
        runs: tuple[Run, ...],
        prompt_tokens: int,
        output_tokens: int,
        *,
        stream: bool = False,
        priority: float = 0.0,
        retention: Retention = RELEASE,
    ) -> CallState:
        """Queue a call on ``replica`` now; its state reports progress and the end."""
        now = self.loop.sync()
        self._seq += 1
        request = Request(
            workflow, f"c{self._seq}", runs, prompt_tokens, output_tokens, self.block_tokens,
            self._seq,
        )
        state = CallState(request, replica, stream, priority, retention, arrived_at=now)
        self.calls[request.seq] = state
        if stream:
            self._streaming[replica] += 1
        target = self.replicas[replica]
        target.enqueue(request, now)
        self._kick(target)
        return state

    def abort(self, state: CallState) -> None:
        """The client left: a queued call is dropped, a running one ends at its next
        step (the engine model has no abort verb; capping its output ends it there,
        releasing its KV as any finished call does)."""
        if state.done:
            return
        self.aborted_calls += 1
        now = self.loop.sync()
        target = self.replicas[state.replica]
        request = state.request
        if target.withdraw(request):
            self.calls.pop(request.seq, None)
            if state.stream:
                self._streaming[state.replica] -= 1
            state.done = True
            return
        request.output_tokens = min(request.output_tokens, request.generated + 1)
        if target.busy:
            self._interrupt(target, now)

    def model_now(self) -> float:
        return self.loop.sync()

    # ---- retention verbs (the KV control API) -------------------------------------------
    def retain(self, replica: int, workflow: str, decision: Retention) -> int:
        """Apply ``decision`` to the KV that ``workflow``'s last call left on ``replica``.

        Returns the blocks concerned (0 when nothing of it is cached any more).
        """
        now = self.loop.sync()
        target = self.replicas[replica]
        left = self.last_kv[replica]
        # a dropped workflow's KV is freed for good: forget it (its next call, if the end
        # was a guess, leaves a new entry)
        runs = left.pop(workflow, None) if decision.kind == "drop" else left.get(workflow)
        if not runs:
            return 0
        node, hit = target.kv.lock(runs, now)
        if hit == 0:
            target.kv.unlock(node, now)
            return 0
        holder = Request(workflow, "retain", runs, 0, 0, self.block_tokens, 0)
        holder.lock = node
        target.apply_retention(holder, decision, now)
        self._schedule_replica_timers(target)
        return hit

    def unpin(self, replica: int, workflow: str) -> bool:
        now = self.loop.sync()
        target = self.replicas[replica]
        released = target.unpin(workflow, now)
        if released and target.waiting:
            self._kick(target)
        return released

    # ---- the stepping loop's hooks (saga.engine.driver.ReplicaDriver) ----------------------
    def _planned(self, replica: Replica, now: float, end: float) -> None:
        index = replica.index
        if (
            self._streaming[index]
            and end - now > self.stream_interval
            and not self._cut_pending[index]
        ):
            self._cut_pending[index] = True
            self.loop.at(now + self.stream_interval, self._cut, replica)

    def _cut(self, replica: Replica) -> None:
        """Cut a long decode run so that streaming calls see their tokens."""
        self._cut_pending[replica.index] = False
        if replica.busy:
            self._interrupt(replica, self.loop.now)

    def _stepped(self, replica: Replica) -> None:
        calls = self.calls
        for request in replica.running:
            state = calls.get(request.seq)
            if state is not None and state.stream and request.generated:
                state.progress.set()

    def _call_done(self, replica: Replica, request: Request) -> None:
        state = self.calls.pop(request.seq, None)
        out = output_run(request, self.block_tokens)
        left = self.last_kv[replica.index]
        left[request.workflow] = request.runs + ((out,) if out is not None else ())
        left.move_to_end(request.workflow)
        if len(left) > self.remembered_workflows:
            left.popitem(last=False)
        self.finished_calls += 1
        if state is None:
            return
        if state.stream:
            self._streaming[replica.index] -= 1
        state.done = True
        state.progress.set()
        self.recent.append(FinishedCall(
            request.workflow, replica.index, state.arrived_at, request.finished_at,
            request.prompt_tokens, request.cached_tokens, request.generated,
        ))

    # ---- observation ----------------------------------------------------------------------
    def replica_state(self, index: int) -> dict[str, object]:
        r = self.replicas[index]
        return {
            "replica": index,
            "model_time": self.loop.sync(),
            "time_scale": self.loop.time_scale,
            "waiting": len(r.waiting),
            "running": len(r.running),
            "outstanding_tokens": r.outstanding_tokens(),
            "kv_capacity_blocks": r.kv.capacity,
            "kv_used_blocks": r.kv.used_blocks,
            "pins": sorted(r.pins),
            "steps": r.steps,
            "prompt_tokens": r.prompt_tokens_total,
            "cached_tokens": r.cached_tokens_total,
            "output_tokens": r.output_tokens_total,
            "busy": r.busy,
            "step_end": r.step_end if r.busy else None,
            "pending_events": self.loop.pending(),
            "late_events": self.loop.late_events,
            "aborted_calls": self.aborted_calls,
        }

    def recent_calls(self, index: int) -> list[dict[str, object]]:
        """Replica ``index``'s share of the recently answered calls, oldest first."""
        return [
            {"workflow": c.workflow, "arrived": c.arrived, "finished": c.finished,
             "prompt_tokens": c.prompt_tokens, "cached_tokens": c.cached_tokens,
             "output_tokens": c.output_tokens}
            for c in self.recent if c.replica == index
        ]
