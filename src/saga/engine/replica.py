"""One inference replica: continuous batching over a paged prefix cache.

This is mechanism only. Every choice is the scheduler core's, asked through
:class:`EngineHooks`: the order of waiting calls (and so which running call is
preempted), what happens to a finished call's KV, which pins to give up under
memory pressure, and which cached blocks to evict (the cache's eviction order).

A step follows vLLM v1's scheduler (docs/engine.md has the rule-by-rule table):
running calls first (a prefill chunk or one decode token each, within the token
budget; when a running call cannot get blocks, the running call last in priority
order is preempted), then, if nothing was preempted, waiting calls in priority
order while the batch and the budget have room and blocks for each one's whole
prompt fit in the free and evictable blocks (``scheduler_reserve_full_isl``).
A prefill chunk's full blocks are cached as soon as it is computed.

Speed: when a batch holds only decodes and nothing could join it, the replica
plans a *run* of ``k`` identical decode steps (up to the first call that ends or
the KV that is free) as one event, timed in closed form by the cost model. An
event that reaches the replica during a run cuts it at the step boundary that
follows, so the result equals stepping one step at a time. A runtime that syncs the
replica before every read (the simulator) may also fold the block boundaries of a run on a
full cache into that event (``fold_boundaries``, :meth:`Replica.sync`, ``engine/fold.py``),
and a run of mixed steps, one prefill chunk beside the same decodes, as the decode guard
makes them (``engine/mixed_fold.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

from saga.engine.config import EngineConfig
from saga.engine.contention import HostShare
from saga.engine.costmodel import CostModel
from saga.engine.fold import Fold, fold_boundaries
from saga.engine.kvcache import EvictionOrder, KVNode, RadixKV, Run, skip_runs, take_runs
from saga.engine.mixed_fold import MixedFold, fold_mixed_steps
from saga.sched.decisions import Retention

if TYPE_CHECKING:
    from saga.sched.view import CallInfo


class Request:
    """One call being served on a replica, with its progress and KV holdings."""

    __slots__ = (
        "anon",
        "anon_since",
        "cached_tokens",
        "call_id",
        "computed",
        "enqueued_at",
        "finished_at",
        "first_token_at",
        "generated",
        "host_tokens",
        "info",
        "keyed_blocks",
        "lock",
        "locked_blocks",
        "output_tokens",
        "preempted_computed",
        "preemptions",
        "prompt_tokens",
        "ready_at",
        "recompute_base",
        "recompute_done_at",
        "recompute_held",
        "recompute_until",
        "recomputed_tokens",
        "reusable_blocks",
        "runs",
        "scheduled_at",
        "seq",
        "workflow",
    )

    def __init__(
        self,
        workflow: str,
        call_id: str,
        runs: tuple[Run, ...],
        prompt_tokens: int,
        output_tokens: int,
        block_tokens: int,
        seq: int,
        info: CallInfo | None = None,
    ) -> None:
        self.workflow = workflow
        self.call_id = call_id
        self.runs = runs
        self.keyed_blocks = sum(r[2] for r in runs)
        # A prompt is at least as long as its keyed blocks: shared prefixes round up.
        self.prompt_tokens = max(prompt_tokens, self.keyed_blocks * block_tokens)
        self.output_tokens = output_tokens
        self.seq = seq
        self.info = info
        self.enqueued_at = 0.0
        self.scheduled_at = -1.0
        self.first_token_at = -1.0
        self.finished_at = -1.0
        self.ready_at = 0.0
        self.computed = 0  # tokens whose KV exists
        self.generated = 0  # output tokens produced
        self.lock: KVNode | None = None  # deepest locked node of the keyed prefix
        self.locked_blocks = 0
        self.anon = 0  # blocks held outside the tree
        self.cached_tokens = 0  # prompt tokens found on the GPU at first admission
        self.host_tokens = 0  # prompt tokens loaded from the host tier
        self.recomputed_tokens = 0  # tokens computed again after preemption
        self.preempted_computed = 0  # tokens whose KV existed when it was last preempted
        self.preemptions = 0
        # Leading blocks of the prompt its workflow computed before (set by the runtime):
        # computing them again on a miss is recomputation.
        self.reusable_blocks = 0
        # While recomputing (blocks up to recompute_until it had, or its workflow had,
        # computed before): the blocks it held when admitted (found cached), and how many
        # beyond them it holds (counted in the cache's recompute_blocks). -1: not recomputing.
        self.recompute_base = -1
        self.recompute_until = 0
        self.recompute_held = 0
        # Its anonymous blocks as [count, since] runs, oldest first (the cache adopts the
        # oldest, a cut run gives back the newest): what a preemption would discard, and
        # for how long it was held. recompute_done_at: when this admission stopped
        # recomputing (its blocks count as waste before that, through recompute_blocks).
        self.anon_since: list[list[float]] = []
        self.recompute_done_at = 0.0

    @property
    def total_tokens(self) -> int:
        """Tokens that must be in KV before the next output token: prompt + output so far."""
        return self.prompt_tokens + self.generated

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.total_tokens

    def __repr__(self) -> str:
        return f"Request({self.workflow}/{self.call_id}, {self.computed}/{self.total_tokens})"


class EngineHooks(Protocol):
    """The scheduler core's answers to the engine's choice points."""

    @property
    def static_order(self) -> bool:
        """True when queue_key of a request never changes (then queues are sorted
        only when they change, not every step)."""
        ...

    def queue_key(self, replica: Replica, request: Request, now: float) -> tuple[float, ...]:
        """Order of service: smaller first. The largest running key is preempted first."""
        ...

    def queue_keys(self, replica: Replica, now: float) -> Callable[[Request], tuple[float, ...]]:
        """``queue_key`` of ``replica``'s calls at ``now`` as one function: what the engine
        sorts a queue by, asked afresh for each sort (nothing changes while a sort runs,
        so the function may read the replica and the policy once, when it is made)."""
        ...

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        """What to do with a finished call's KV while its workflow is in a tool call."""
        ...

    def unpin_order(self, replica: Replica, now: float) -> list[str]:
        """Workflows whose pins to give up first when memory runs short."""
        ...

    def preempt_for(self, replica: Replica, waiting: Request, running: Request, now: float) -> bool:
        """On a full replica: True to preempt ``running`` (the last in queue order) so
        that ``waiting`` (the first waiting call) can start (fair-share preemption)."""
        ...

    def prefill_limit(self, replica: Replica, now: float) -> int | None:
        """Most prompt tokens (prefill chunks, over all calls) the coming step computes,
        below its token budget; decodes still take one token each. None: the budget
        alone, as vLLM by default."""
        ...


class Pin:
    """KV kept on the GPU for a workflow between its calls."""

    __slots__ = ("expires", "node")

    def __init__(self, node: KVNode, expires: float) -> None:
        self.node = node
        self.expires = expires


class QueueTokens:
    """Token sums over a replica's queues, kept as calls move so that placement reads
    them in O(1) rather than call by call (busy replicas hold a hundred calls each):

    * ``context_tokens``: KV tokens the running calls have computed (the decode
      batch's context);
    * ``demand_tokens``: tokens the waiting calls still need in KV;
    * ``backlog_tokens``: prefill ahead, that is, per running call the tokens before
      its next output token but one, per waiting call its prompt not yet computed.

    Whoever moves a call in or out of ``running``/``waiting``, or changes its
    ``computed``, ``generated`` or ``prompt_tokens``, counts it out before and in
    after (or updates the sums by the exact difference).
    """

    running: list[Request]
    waiting: list[Request]
    context_tokens: int
    demand_tokens: int
    backlog_tokens: int

    def _clear_queue_tokens(self) -> None:
        self.context_tokens = self.demand_tokens = self.backlog_tokens = 0

    def check_queue_tokens(self) -> None:
        """Assert that the sums equal a count from scratch (for tests)."""
        running, waiting = self.running, self.waiting
        context = sum(r.computed for r in running)
        demand = sum(r.prompt_tokens + r.generated - r.computed for r in waiting)
        backlog = sum(max(0, r.prompt_tokens + r.generated - r.computed - 1) for r in running)
        backlog += sum(max(0, r.prompt_tokens - r.computed) for r in waiting)
        kept = (self.context_tokens, self.demand_tokens, self.backlog_tokens)
        assert kept == (context, demand, backlog), (kept, (context, demand, backlog))

    def _count_running(self, request: Request, sign: int) -> None:
        """Add (``sign`` 1) or take out (-1) a running call's share of the sums."""
        computed = request.computed
        self.context_tokens += sign * computed
        left = request.prompt_tokens + request.generated - computed - 1
        if left > 0:
            self.backlog_tokens += sign * left

    def _count_waiting(self, request: Request, sign: int) -> None:
        """Add (``sign`` 1) or take out (-1) a waiting call's share of the sums."""
        prompt, computed = request.prompt_tokens, request.computed
        self.demand_tokens += sign * (prompt + request.generated - computed)
        if computed < prompt:
            self.backlog_tokens += sign * (prompt - computed)


class Replica(QueueTokens):
    """Mechanics of one replica. Driven by a runtime through plan/complete/interrupt."""

    def __init__(
        self,
        index: int,
        config: EngineConfig,
        cost: CostModel,
        hooks: EngineHooks,
        *,
        block_tokens: int,
        capacity_blocks: int,
        host_capacity_blocks: int = 0,
        eviction: EvictionOrder | None = None,
    ) -> None:
        self.index = index
        self.slots: int | None = None  # no slots: memory alone bounds the sequences kept
        self.config = config
        self.cost = cost
        self.hooks = hooks
        self.block_tokens = block_tokens
        self.kv = RadixKV(capacity_blocks, eviction)
        self.host: RadixKV | None = RadixKV(host_capacity_blocks) if host_capacity_blocks else None
        self.block_bytes = cost.model.kv_bytes_per_token() * block_tokens
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._clear_queue_tokens()
        self.pins: dict[str, Pin] = {}
        self.new_pins: list[tuple[str, Pin]] = []  # for the runtime to time their expiry
        # (time, runs) the runtime should call prefetch() at, from offload decisions
        self.new_prefetches: list[tuple[float, tuple[Run, ...]]] = []
        #: Plan pure-decode runs as one event (off only to test that runs change nothing).
        self.decode_runs = True
        #: Fold a memory-bound decode run's block boundaries into its event, and a run of
        #: mixed steps into one event (see :meth:`sync`). Off by default: the runtime turns
        #: it on only if it brings the replica up to date (:meth:`sync`) before anything
        #: reads it, as the simulator does.
        self.fold_boundaries = False
        #: The runtime also brings every replica with a folded run up to the clock before
        #: any policy hook that may change the policy's state (``sim/fold_barrier.py``):
        #: then a run folds under a keyed eviction order and a dynamic queue order too,
        #: whose keys read that state (:meth:`sync` asks them at each boundary's instant).
        self.fold_under_hooks = False
        # The runs still folded after the current one, in order (the last one's end is
        # the event's time): each is the run that planning at the previous end would start.
        self._folded: list[Fold] = []
        # the calls of the folded run, in the batch's order when it was planned (the
        # folds' positions index this; the batch's own order may change at a boundary)
        self._fold_calls: list[Request] = []
        # The mixed steps (a prefill chunk beside decodes) folded after the current one,
        # in order (engine/mixed_fold.py); :meth:`sync` replays each at its own instant.
        self._mixed: list[MixedFold] = []
        # the prefill limit the policy gave the step last formed (_form_batch)
        self._step_limit: int | None = None
        # the folded mixed steps' prefilling call (its position in _fold_calls) and the
        # chunk of the step in flight
        self._mixed_prompt = 0
        self._mixed_chunk = 0
        self.up = True
        #: The replicas sharing this one's host cores (saga.engine.contention); None: its
        #: steps take the cost model's time whatever the others do.
        self.host_share: HostShare | None = None
        # the step or run in flight
        self.busy = False
        self.step_start = 0.0
        self.step_end = 0.0
        self.version = 0
        self._batch: list[tuple[Request, int]] = []
        self._run_steps = 0  # > 0: a decode run of this many steps
        # A run that just ended with every call still decoding: its batch and when it
        # ended, so that planning at that instant can reuse the batch (_continue_run).
        self._ended_run: list[tuple[Request, int]] = []
        self._ended_at = -1.0
        self._run_ctx = 0
        self._link_free_at = 0.0
        self.blocked_on_memory = False  # the last admission stopped for want of blocks
        # With a static queue order, sort only after the queues changed.
        self._running_unsorted = False
        self._waiting_unsorted = False
        # counters for metrics
        self.steps = 0
        self.busy_seconds = 0.0
        #: (start, end) within which stepping time is also counted in window_busy_seconds
        self.busy_window = (0.0, 0.0)
        self.window_busy_seconds = 0.0
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0
        self.recomputed_tokens_total = 0
        self.output_tokens_total = 0
        self.fair_preemptions = 0

    # ---- observations ------------------------------------------------------------------
    @property
    def max_num_batched_tokens(self) -> int:
        """The chunk budget of a step (what policies read, :class:`saga.sched.view.ReplicaView`)."""
        return self.config.max_num_batched_tokens

    def outstanding_tokens(self) -> int:
        """Work a router can see: prompt tokens still to prefill, plus a fixed decode
        allowance per call (a real router does not know how long an output will be,
        so the true output length is deliberately not used)."""
        return sum(_remaining(r) for r in self.waiting) + sum(_remaining(r) for r in self.running)

    def load(self) -> int:
        """Calls queued or running (what least-outstanding routers count)."""
        return len(self.waiting) + len(self.running)

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        return self.kv.match_blocks(runs)

    @property
    def stepping(self) -> bool:
        """Running a step or a decode run now (not only waiting for a host load): what
        slows the replicas that share its host (saga.engine.contention)."""
        return self.busy and bool(self._batch)

    def share_host(self, share: HostShare) -> None:
        """Step on cores shared with ``share``'s other replicas: each step is timed by
        their state at its start, so decode steps are planned one per event."""
        self.host_share = share
        self.decode_runs = False

    # ---- the runtime's verbs -----------------------------------------------------------
    def enqueue(self, request: Request, now: float) -> None:
        if self._folded or self._mixed:
            self.sync(now)
        request.enqueued_at = now
        self.waiting.append(request)
        self._count_waiting(request, 1)
        self._waiting_unsorted = True

    def withdraw(self, request: Request) -> bool:
        """Take a waiting call off the queue (its client left); False if not waiting."""
        # (no sync: a folded run has no waiting call, and folded mixed steps admit none,
        # so taking one off changes no step of theirs)
        if request not in self.waiting:
            return False
        self.waiting.remove(request)
        self._count_waiting(request, -1)
        return True

    def plan(self, now: float) -> float | None:
        """Start the next step if idle and there is work; return when it ends.

        Returns None when idle with nothing runnable. When only host loads are
        pending, returns the time the first completes (a wake-up, no step).
        """
        if self.busy or not self.up:
            return None
        batch = self._continue_run(now)
        if batch:
            preempted = False
        else:
            batch, preempted = self._form_batch(now)
        if not batch:
            pending = [r.ready_at for r in self.running if r.ready_at > now]
            if pending:
                self.busy = True
                self._batch = []
                self._run_steps = 0
                self.step_start = now
                self.step_end = min(pending)
                return self.step_end
            return None
        self._batch = batch
        self._run_steps = 0
        steps = 0 if preempted or not self.decode_runs else self._decode_run_length(now, batch)
        if steps > 1:
            self._run_steps = steps
            # a run's batch is every running call, so its context is the kept sum
            self._run_ctx = self.context_tokens
            duration = self.cost.decode_steps_time(len(batch), self._run_ctx, steps)
        else:
            duration = self._step_time(batch)
        if self.host_share is not None:
            duration *= self.host_share.slowdown(self)
        self.busy = True
        self.step_start = now
        self.step_end = now + duration
        if self.fold_boundaries:
            if steps > 1:
                self._folded = fold_boundaries(self, now, batch, steps)
                if self._folded:
                    self._fold_calls = [r for r, _ in batch]
                    return self._folded[-1][0]
            elif not preempted:
                self._mixed = fold_mixed_steps(self, batch, self._step_limit)
                if self._mixed:
                    self._fold_calls = [r for r, _ in batch]
                    # the one call with a chunk of more than a token (mixed_fold.py)
                    self._mixed_prompt = next(i for i, (_, q) in enumerate(batch) if q > 1)
                    self._mixed_chunk = batch[self._mixed_prompt][1]
                    return self._mixed[-1][0]
        return self.step_end

    @property
    def folded(self) -> bool:
        """A folded run has boundaries (or folded mixed steps) still to apply (:meth:`sync`)."""
        return bool(self._folded or self._mixed)

    def sync(self, now: float, ordered: bool = True) -> None:
        """Bring a folded run up to ``now``: apply each of its block boundaries that has
        passed, at its own instant, as its event would have (the run's end, then planning
        at that instant, which continues the run: ``_complete``, ``_continue_run`` or
        ``_form_batch``, and ``_decode_run_length`` do the same to the state). Whoever
        reads or changes the replica while it runs calls this first; the runtime's event
        at the fold's last end applies the rest.

        Why it is exact: planning at a boundary of a folded run asks the policy at most
        its queue keys (nothing waits) and evicts in the cache's order. A static order
        depends on this replica's cache alone. A keyed order, or a dynamic queue order,
        reads the policy's state: those fold only under a runtime that brings this
        replica up to date before any hook that may change that state
        (``fold_under_hooks``), so the state read here, later, is the state of the
        boundary's instant, and the keys are asked at that instant. So the same work done
        later gives the same state, provided nothing read or changed the replica in
        between, which is what calling this first ensures. Under a static order the
        calls' progress is added once for all the runs applied (nothing in between reads
        it); under a dynamic one before the last boundary applied, whose queue keys sort
        the running calls (an earlier boundary's sort is read by nothing: the folds index
        the calls as planned, and the keys change no state).

        ``ordered`` False (the barrier's syncs, ``sim/fold_barrier.py``): the queues are
        sorted only where the engine itself reads their order, the step before the fold's
        last (its calls finish in the batch's order), not after every step applied.
        The audit of the readers in docs/engine.md ("Tenth pass") says why no other
        reader depends on it: the engine sorts both queues before it reads them again,
        and the policies read the queues' lengths and sums alone. A later ordered sync
        that applies no step leaves that order as it is."""
        if self._mixed:
            self._sync_mixed(now, ordered)
            return
        folded = self._folded
        if not folded or self.step_end > now:
            return
        calls = self._fold_calls
        n = len(calls)
        due = 0  # the boundaries passed: the run in flight's end, then each folded one's
        boundary = self.step_end
        while due < len(folded) and boundary <= now:
            boundary = folded[due][0]
            due += 1
        # stepping sorts the running calls by their keys at each boundary (_form_batch);
        # only the last one applied is read, and under ``ordered`` False only when the run
        # in flight is the fold's last
        resort = n > 1 and not self.hooks.static_order and (ordered or due == len(folded))
        running = self.running
        kv = self.kv
        low, high = self.busy_window
        taken = 0  # decode steps applied, for each call of the batch
        for index in range(due):
            next_end, next_steps, grow = folded[index]
            end = self.step_end
            # the run that ends here (_complete's run branch: no call ends, none trimmed)
            start, steps = self.step_start, self._run_steps
            self.steps += steps
            self.busy_seconds += end - start
            self.window_busy_seconds += max(0.0, min(end, high) - max(start, low))
            self.context_tokens += n * steps  # _step_tokens: each computed what it emitted
            taken += steps
            if resort and index == due - 1:
                # the calls' progress, then their keys at this boundary (a key may read the
                # cache: before this boundary's growth, as planning there asks them)
                for request in calls:
                    request.computed += taken
                    request.generated += taken
                taken = 0
                hooks = self.hooks
                running.sort(key=hooks.queue_keys(self, end))
                self._batch = [(request, 1) for request in running]  # a run's q is 1
            # planning at ``end``: each call at a block's end takes one more
            for i in grow:
                request = calls[i]
                if not kv.allocate(1, end):
                    raise AssertionError("a folded boundary found no block to take")
                request.anon += 1
                request.anon_since.append([1, end])
            # the run that planning at ``end`` starts
            self._run_steps = next_steps
            self._run_ctx = self.context_tokens
            self.step_start = end
            self.step_end = next_end
        del folded[:due]
        if taken:
            for request in calls:
                request.computed += taken
                request.generated += taken

    def _sync_mixed(self, now: float, ordered: bool = True) -> None:
        """Bring folded mixed steps up to ``now``: at each passed step's end, what that
        step's end and the planning that follows it do (``_complete``, ``_form_batch``),
        at that instant, for the one call that prefills (its chunk, its cached blocks, its
        recomputation's end, its blocks for the next chunk) and for the decodes that take
        a block (``engine/mixed_fold.py`` predicted which). The decodes' progress, the same
        token each step, is added once at the last step applied: nothing in between reads
        it (no hook runs, no call finishes, the growth above is predicted). Under a
        dynamic queue order the running calls are sorted once, by their keys at the last
        step's instant, after its end and before its growth, as planning there does: the
        keys have no sorted order of their own to keep (the sequence number breaks ties),
        and the order in between decides nothing (one call prefills, every call fits the
        budget, and which call takes a block first does not change what is evicted). The
        waiting calls likewise, after the growth, as ``_admit_waiting`` sorts them (with
        no prompt tokens left it admits none). Under ``ordered`` False (:meth:`sync`) the
        running calls are sorted only when the step in flight is the fold's last, and the
        waiting calls not at all (the engine sorts them before it reads them)."""
        mixed = self._mixed
        if self.step_end > now:
            return
        due = 0  # the steps' ends passed: the current step's, then each folded one's
        boundary = self.step_end
        while due < len(mixed) and boundary <= now:
            boundary = mixed[due][0]
            due += 1
        calls = self._fold_calls
        prompt = calls[self._mixed_prompt]
        kv = self.kv
        bt = self.block_tokens
        decodes = len(calls) - 1
        low, high = self.busy_window
        resort = decodes > 0 and not self.hooks.static_order and (ordered or due == len(mixed))
        chunk = self._mixed_chunk
        for step in range(due):
            next_end, next_chunk, grow = mixed[step]
            end = self.step_end
            # the step that ends here (_complete's step branch: the decodes emit a token,
            # the prompt computes its chunk; no call finishes)
            start = self.step_start
            self.steps += 1
            self.busy_seconds += end - start
            self.window_busy_seconds += max(0.0, min(end, high) - max(start, low))
            prompt.computed += chunk
            self._step_tokens(decodes + chunk, decodes)
            if prompt.locked_blocks < prompt.keyed_blocks:
                self._cache_computed(prompt, end)
            total = prompt.prompt_tokens + prompt.generated
            if prompt.recompute_base >= 0 and prompt.computed >= min(
                prompt.recompute_until * bt, total
            ):
                self._end_recompute(prompt, end)
            if prompt.first_token_at < 0 and prompt.generated > 0:
                prompt.first_token_at = end
            if step == due - 1:
                for request in calls:
                    if request is not prompt:
                        request.computed += due
                        request.generated += due
                if resort:
                    hooks = self.hooks
                    self.running.sort(key=hooks.queue_keys(self, end))
            # planning at ``end``: each decode at a block's end takes one more, the prompt
            # the blocks of its next chunk
            for i in grow:
                request = calls[i]
                if not kv.allocate(1, end):
                    raise AssertionError("a folded mixed step found no block to take")
                request.anon += 1
                request.anon_since.append([1, end])
            if not self._grow(prompt, prompt.computed + next_chunk, end):
                raise AssertionError("a folded mixed step found no block for its chunk")
            if step == due - 1 and ordered and self.waiting:
                # _admit_waiting: no prompt tokens left to admit with; it sorts the queue
                self._sort_waiting(end)
            chunk = next_chunk
            self.step_start = end
            self.step_end = next_end
        del mixed[:due]
        self._mixed_chunk = chunk
        self._batch = [(r, chunk if r is prompt else 1) for r in self.running]

    def interrupt(self, now: float) -> float | None:
        """Cut a decode run at the first step boundary at or after ``now``.

        Returns the new end time if it changed (the runtime reschedules), else None.
        """
        if self._folded or self._mixed:
            self.sync(now)
            if self._folded or self._mixed:
                # the boundaries (or steps) after the current run are no longer folded: the
                # runtime's event moves to the current run's end, or to its cut (below)
                self._folded = []
                self._mixed = []
                if self._cut(now) is None:
                    self.version += 1
                return self.step_end
        if not self.busy or now >= self.step_end:
            return None
        if not self._batch:  # only waiting for a host load: plan again now
            self.step_end = now
            self.version += 1
            return now
        return self._cut(now)

    def _cut(self, now: float) -> float | None:
        """Cut the run in flight at the first step boundary at or after ``now`` (before
        its end); the new end, or None if the run ends there anyway."""
        if self._run_steps <= 1:
            return None
        n = len(self._batch)
        done = self.cost.decode_steps_within(n, self._run_ctx, now - self.step_start)
        steps = min(self._run_steps, done + 1)
        if steps >= self._run_steps:
            return None
        self._run_steps = steps
        self.step_end = self.step_start + self.cost.decode_steps_time(n, self._run_ctx, steps)
        self.version += 1
        return self.step_end

    def complete(self, now: float) -> list[Request]:
        """Apply the step (or run) that ends at ``now``; return the calls that finished."""
        if self._folded or self._mixed:
            self.sync(now)
        return self._complete(now)

    def _complete(self, now: float) -> list[Request]:
        self.busy = False
        if not self._batch:
            return []
        self.steps += max(1, self._run_steps)
        self.busy_seconds += now - self.step_start
        low, high = self.busy_window
        self.window_busy_seconds += max(0.0, min(now, high) - max(self.step_start, low))
        finished: list[Request] = []
        steps = self._run_steps
        if steps > 0:
            # a run: every call took `steps` decode steps (its first token came before)
            bt = self.block_tokens
            for request, _ in self._batch:
                request.computed += steps
                request.generated += steps
                if request.generated >= request.output_tokens:
                    finished.append(request)
                elif request.anon > -(-request.computed // bt) - request.locked_blocks:
                    self._trim(request, now)  # a cut run reserved blocks for steps not taken
            computed = emitted = steps * len(self._batch)
            if not finished:
                self._ended_run = self._batch
                self._ended_at = now
        else:
            computed = emitted = 0  # tokens, for the queue sums (_step_tokens)
            for request, q in self._batch:
                # A step emits a token when it completes the KV of everything so far;
                # a decode is the case of one missing token.
                done = request.computed + q
                request.computed = done
                computed += q
                if request.locked_blocks < request.keyed_blocks:
                    self._cache_computed(request, now)
                total = request.prompt_tokens + request.generated
                if request.recompute_base >= 0 and done >= min(
                    request.recompute_until * self.block_tokens, total
                ):
                    self._end_recompute(request, now)
                if done >= total:
                    generated = request.generated = request.generated + 1
                    emitted += 1
                    if request.first_token_at < 0:
                        request.first_token_at = now
                    if generated >= request.output_tokens:
                        finished.append(request)
                else:  # a prefill chunk: no token (unless a preemption left some output)
                    if request.first_token_at < 0 and request.generated > 0:
                        request.first_token_at = now
                    if request.generated >= request.output_tokens:
                        finished.append(request)
        self._step_tokens(computed, emitted)
        self._batch = []
        self._run_steps = 0
        for request in finished:
            self._finish(request, now)
        return finished

    def _step_tokens(self, computed: int, emitted: int) -> None:
        """Update the queue sums for a step (or run) in which running calls computed
        ``computed`` tokens of KV and emitted ``emitted`` tokens, in O(1) rather than
        call by call. A running call always lacks the KV of at least its next token
        (admission computes at most total - 1, a step at most what is missing, and
        an emitted token is one more to compute), so its backlog share is exactly
        total - computed - 1: it shrinks by what was computed less what was emitted."""
        self.context_tokens += computed
        self.backlog_tokens -= computed - emitted

    # ---- batch formation ---------------------------------------------------------------
    def _continue_run(self, now: float) -> list[tuple[Request, int]]:
        """The batch :meth:`_form_batch` would form at ``now``, cheaply, when a decode run
        ended at ``now`` with every call still decoding (most runs end where a call needs
        a block that is not free); empty, having changed nothing, when it does not apply.

        What _form_batch does then, step by step: no sort (a static order, nothing
        moved), no fairness preemption and no admission (nothing waits), every running
        call in order with one decode token (the budget covers them all), each call whose
        next token starts a block growing by one; the blocks all fit (else the general
        path, which preempts), so no pin is given up."""
        batch = self._ended_run
        if not batch:
            return batch
        self._ended_run = []
        running = self.running
        if (
            self._ended_at != now
            or self.waiting
            or len(batch) != len(running)
            or len(batch) > self.config.max_num_batched_tokens
            or (len(running) > 1 and (self._running_unsorted or not self.hooks.static_order))
        ):
            return []
        bt = self.block_tokens
        need = 0
        for request, _ in batch:
            if -(-(request.computed + 1) // bt) > request.locked_blocks + request.anon:
                need += -(-(request.computed + 1) // bt) - request.locked_blocks - request.anon
        if need:
            if need > self.kv.available_blocks:
                return []
            for request, _ in batch:
                self._grow(request, request.computed + 1, now)
        return batch

    def _form_batch(self, now: float) -> tuple[list[tuple[Request, int]], bool]:
        hooks = self.hooks
        if len(self.running) > 1 and (self._running_unsorted or not hooks.static_order):
            self.running.sort(key=hooks.queue_keys(self, now))
            self._running_unsorted = False
        if self.waiting:
            self._preempt_for_fairness(now)
        budget = self.config.max_num_batched_tokens
        limit = self._step_limit = hooks.prefill_limit(self, now)
        prefill = budget if limit is None else limit  # prompt tokens left to this step
        bt = self.block_tokens
        batch: list[tuple[Request, int]] = []
        append = batch.append
        preempted = False
        running = self.running
        count = len(running)  # (changes only when a call is preempted)
        index = 0
        while index < count and budget > 0:
            request = running[index]
            if request.ready_at > now:
                index += 1
                continue
            computed = request.computed
            left = request.prompt_tokens + request.generated - computed
            q = left if left < budget else budget
            if left > 1:  # a prefill chunk (a decode computes its one new token)
                if q > prefill:
                    q = prefill
                    if q <= 0:  # the step's prompt tokens are spent: decodes only
                        index += 1
                        continue
                prefill -= q
            if -(-(computed + q) // bt) <= request.locked_blocks + request.anon:
                # holds the blocks already (most decode steps): _grow would do nothing
                append((request, q))
                budget -= q
                index += 1
                continue
            while not self._grow(request, request.computed + q, now):
                victim = running[-1]
                preempted = True
                self._preempt(victim, now)
                count = len(running)
                if victim is request:
                    break
            else:
                append((request, q))
                budget -= q
                index += 1
                continue
            # the request preempted itself: it left self.running, so do not advance
        if not preempted and self.waiting:
            self._admit_waiting(now, batch, min(budget, prefill))
        return batch, preempted

    def _sort_waiting(self, now: float) -> None:
        hooks = self.hooks
        if len(self.waiting) > 1 and (self._waiting_unsorted or not hooks.static_order):
            self.waiting.sort(key=hooks.queue_keys(self, now))
            self._waiting_unsorted = False

    def _preempt_for_fairness(self, now: float) -> None:
        """When the replica is full (every sequence slot taken, or the last admission
        found no blocks), let the policy preempt the last running call for the first
        waiting one. At most one per step: the freed slot or blocks go to the first
        waiting call in this very step, so one preemption per step cannot thrash."""
        if not self.waiting or not self.running:
            return
        if len(self.running) < self.config.max_num_seqs and not self.blocked_on_memory:
            return
        self._sort_waiting(now)
        victim = self.running[-1]
        if self.hooks.preempt_for(self, self.waiting[0], victim, now):
            self.fair_preemptions += 1
            self._preempt(victim, now)

    def _admit_waiting(self, now: float, batch: list[tuple[Request, int]], budget: int) -> None:
        if not self.waiting:
            return
        self._sort_waiting(now)
        admitted = 0
        self.blocked_on_memory = False
        for request in self.waiting:
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            # Check first, touch after: a call that does not fit leaves the cache as
            # it was (no lock, no LRU stamp, no host load), as vLLM's allocate_slots
            # returns None before it takes the prefix hit's blocks.
            # Pins are given up for a waiting call only on a replica where nothing
            # runs: otherwise the call waits for running calls to free blocks, as in
            # vLLM, rather than cost a workflow its retained KV (a SAGA choice), unless
            # the engine modelled gives them up anyway (pins_yield_to_waiting).
            need = partial(self._admission_need, request, budget)
            unpin = not self.running or self.config.pins_yield_to_waiting
            if not self._make_room(need, now, keep=request.workflow, unpin=unpin):
                # vLLM stops admitting at the first call whose blocks do not fit
                self.blocked_on_memory = True
                break
            self._count_waiting(request, -1)  # _start sets what it has computed
            cached = self._start(request, now)
            ready = request.ready_at <= now
            q = min(request.total_tokens - request.computed, budget) if ready else 0
            grown = self._grow(request, request.computed + q, now)
            assert grown, "the admission check counted the first chunk's blocks"
            self._admitted(request, cached, now)
            admitted += 1
            self.running.append(request)
            self._count_running(request, 1)
            if ready:
                batch.append((request, q))
                budget -= q
        if admitted:
            del self.waiting[:admitted]
            self._running_unsorted = True

    def _admission_need(self, request: Request, budget: int) -> int:
        """Blocks that admitting the waiting ``request`` takes out of the free and
        evictable ones: the blocks of its whole sequence (``scheduler_reserve_full_isl``,
        vLLM's default) or of its first chunk, beyond its prefix hit on the GPU, plus
        the hit's blocks that are evictable now (locking them makes them not).
        Mirrors vLLM's ``KVCacheManager.allocate_slots``; reads, never touches."""
        bt = self.block_tokens
        hit, idle = self.kv.match_idle(request.runs)
        present = hit
        if self.host is not None:
            present = max(hit, self.host.match_blocks(request.runs))
        total = request.total_tokens
        if self.config.scheduler_reserve_full_isl:
            tokens = total
        elif present > hit:
            tokens = 0  # only the host load this step; its chunk comes when it lands
        else:
            computed = min(present * bt, total - 1)
            tokens = computed + min(total - computed, budget)
        return max(present - hit, -(-tokens // bt) - hit) + idle

    def _admitted(self, request: Request, cached: int, now: float) -> None:
        request.recompute_done_at = now
        pin = self.pins.pop(request.workflow, None)
        if pin is not None:
            self.kv.unlock(pin.node, now, user=False)
        if request.scheduled_at < 0:
            request.scheduled_at = now
            request.cached_tokens = max(0, cached - request.host_tokens)
            self.prompt_tokens_total += request.prompt_tokens
            self.cached_tokens_total += request.cached_tokens
            if request.reusable_blocks > request.locked_blocks:  # its prefix was evicted
                self._start_recompute(request, request.reusable_blocks, now)
        else:
            # what existed before the preemption and was lost (not the prompt it had
            # not reached yet, nor what its cached chunks kept)
            recomputed = max(0, request.preempted_computed - cached)
            request.recomputed_tokens += recomputed
            self.recomputed_tokens_total += recomputed
            if recomputed > 0:
                self._start_recompute(request, -(-request.total_tokens // self.block_tokens), now)

    # ---- useful-memory accounting: blocks held while recomputing are waste -------------
    def _start_recompute(self, request: Request, until: int, now: float) -> None:
        request.recompute_base = request.locked_blocks
        request.recompute_until = until
        self._track_recompute(request, now)

    @staticmethod
    def _anon_added(request: Request, blocks: int, now: float) -> None:
        if blocks > 0:
            request.anon_since.append([blocks, now])

    @staticmethod
    def _anon_removed(request: Request, blocks: int, oldest: bool) -> None:
        """``blocks`` anonymous blocks left: the oldest (cached) or the newest (given back)."""
        runs = request.anon_since
        while blocks > 0 and runs:
            run = runs[0] if oldest else runs[-1]
            taken = min(blocks, int(run[0]))
            run[0] -= taken
            blocks -= taken
            if run[0] == 0:
                runs.pop(0 if oldest else -1)

    def _discard_anon(self, request: Request, now: float) -> None:
        """A preemption discards the call's anonymous blocks: the block-seconds they were
        held (after any recomputation, counted apart) served KV that must be computed again.
        A call preempted while still recomputing adds nothing here."""
        if request.recompute_base < 0:
            since = request.recompute_done_at
            held = sum(count * (now - max(start, since)) for count, start in request.anon_since)
            self.kv.discard_held(held)
        request.anon_since.clear()

    def _track_recompute(self, request: Request, now: float) -> None:
        """Count the blocks a recomputing call holds beyond those it found cached, up to
        the end of what was computed before."""
        held = min(request.locked_blocks + request.anon, request.recompute_until)
        held = max(0, held - request.recompute_base)
        self.kv.hold_recomputed(held - request.recompute_held, now)
        request.recompute_held = held

    def _end_recompute(self, request: Request, now: float) -> None:
        request.recompute_done_at = now
        self.kv.hold_recomputed(-request.recompute_held, now)
        request.recompute_held = 0
        request.recompute_base = -1

    def _start(self, request: Request, now: float) -> int:
        """Lock the cached prefix of a waiting call, loading more from the host tier.

        Returns the tokens whose KV is then present.
        """
        kv = self.kv
        node, hit = kv.lock(request.runs, now)
        host_hit = self.host.match_blocks(request.runs) if self.host is not None else 0
        if host_hit > hit:
            load = host_hit - hit
            if not self._allocate(load, now):
                load = 0
            else:
                skip = skip_runs(request.runs, hit)
                loaded, _ = take_runs(skip, load)
                new_node, added = kv.insert(node, loaded, now)
                kv.unlock(node, now)
                kv.adopt(added, now)
                kv.release_anonymous(load - added, now)
                node = new_node
                start = max(now, self._link_free_at)
                self._link_free_at = start + self.cost.host_transfer_time(load * self.block_bytes)
                request.ready_at = self._link_free_at
                request.host_tokens += load * self.block_tokens
                hit += load
        request.lock = node
        request.locked_blocks = hit
        cached = min(hit * self.block_tokens, request.total_tokens - 1)
        request.computed = cached
        return cached

    def _grow(self, request: Request, tokens: int, now: float) -> bool:
        """Make ``request`` hold blocks for ``tokens`` tokens."""
        need = -(-tokens // self.block_tokens) - request.locked_blocks - request.anon
        if need <= 0:
            return True
        if not self._allocate(need, now):
            return False
        request.anon += need
        self._anon_added(request, need, now)
        if request.recompute_base >= 0:
            self._track_recompute(request, now)
        return True

    def _allocate(self, blocks: int, now: float) -> bool:
        kv = self.kv
        if blocks <= kv.available_blocks:  # (most calls) _make_room would return True
            return kv.allocate(blocks, now)
        return self._make_room(lambda: blocks, now) and kv.allocate(blocks, now)

    def _make_room(
        self, need: Callable[[], int], now: float, keep: str = "", unpin: bool = True
    ) -> bool:
        """True when ``need()`` blocks fit in the free and evictable ones, giving up
        pins (if ``unpin``; never ``keep``'s) in the policy's order until they do.
        ``need`` is asked again after each pin given up: a pin may hold part of a
        prefix hit."""
        kv = self.kv
        if need() <= kv.available_blocks:
            return True
        if not unpin or not self.pins:
            return False
        released: list[tuple[str, Pin]] = []
        for workflow in self.hooks.unpin_order(self, now):
            pin = self.pins.get(workflow)
            if pin is None or workflow == keep:
                continue
            self.unpin(workflow, now)
            released.append((workflow, pin))
            if need() <= kv.available_blocks:
                return True
        # Not enough even so: nothing was evicted, so the pins' blocks are all still
        # cached and the pins are restored as they were.
        for workflow, pin in released:
            kv.acquire(pin.node, now, user=False)
            self.pins[workflow] = pin
        return False

    def _trim(self, request: Request, now: float) -> None:
        """Give back blocks reserved for steps that did not happen (cut runs)."""
        need = -(-request.computed // self.block_tokens) - request.locked_blocks
        extra = request.anon - max(need, 0)
        if extra > 0:
            self._anon_removed(request, extra, oldest=False)
            request.anon -= extra
            self.kv.release_anonymous(extra, now)

    def _preempt(self, request: Request, now: float) -> None:
        self.running.remove(request)
        self._count_running(request, -1)
        request.preemptions += 1
        if self.config.preemption == "swap" and self.host is not None:
            self._copy_to_host(request, now)
        self._release_kv(request, now)
        request.preempted_computed = request.computed
        request.computed = 0
        request.ready_at = 0.0
        self.waiting.insert(0, request)
        self._count_waiting(request, 1)
        self._waiting_unsorted = True

    def _release_kv(self, request: Request, now: float) -> None:
        self._discard_anon(request, now)
        if request.recompute_base >= 0:
            self._end_recompute(request, now)
        if request.lock is not None:
            self.kv.unlock(request.lock, now)
            request.lock = None
        request.locked_blocks = 0
        if request.anon:
            self.kv.release_anonymous(request.anon, now)
            request.anon = 0

    def _cache_computed(self, request: Request, now: float) -> None:
        """Cache the prompt's keyed blocks whose KV is now complete, chunk by chunk, as
        vLLM caches each scheduled chunk's full blocks (``KVCacheManager.allocate_slots``
        calls ``cache_blocks``): a call preempted mid-prefill leaves them cached."""
        full = min(request.computed // self.block_tokens, request.keyed_blocks)
        locked = request.locked_blocks
        if full <= locked:
            return
        # (most chunks lie in one run: no need to slice the runs)
        skipped = 0
        for namespace, first, count in request.runs:
            if locked < skipped + count:
                if full <= skipped + count:
                    chunk = ((namespace, first + locked - skipped, full - locked),)
                    self._extend_lock(request, chunk, now)
                    return
                break
            skipped += count
        done, _ = take_runs(skip_runs(request.runs, locked), full - locked)
        self._extend_lock(request, done, now)

    def _extend_lock(self, request: Request, runs: Sequence[Run], now: float) -> None:
        lock = request.lock
        assert lock is not None
        if len(runs) == 1:
            # Most often the call's own private leaf (its previous chunk's node, or its
            # prompt's end for the output) continues the run: extended in place.
            namespace, first, blocks = runs[0]
            if self.kv.extend_private(lock, namespace, first, blocks, now):
                self._adopt_locked(request, blocks, blocks, now)
                return
        blocks = sum(r[2] for r in runs)
        node, added = self.kv.insert(lock, runs, now)
        self.kv.unlock(lock, now)
        request.lock = node
        self._adopt_locked(request, blocks, added, now)

    def _adopt_locked(self, request: Request, blocks: int, added: int, now: float) -> None:
        """The call's lock grew by ``blocks`` blocks, ``added`` of them newly cached."""
        request.locked_blocks += blocks
        # the blocks were the request's own: now cached (or duplicates, freed)
        taken = min(blocks, request.anon)
        self._anon_removed(request, taken, oldest=True)
        request.anon -= taken
        self.kv.adopt(min(added, taken), now)
        if taken > added:
            self.kv.release_anonymous(taken - added, now)

    def _finish(self, request: Request, now: float) -> None:
        request.finished_at = now
        request.anon_since.clear()  # its KV served it to the end: nothing discarded
        self.running.remove(request)
        self._count_running(request, -1)
        self.output_tokens_total += request.generated
        output = output_run(request, self.block_tokens)
        if output is not None and request.lock is not None:
            self._extend_lock(request, (output,), now)
        if request.anon:
            self.kv.release_anonymous(request.anon, now)
            request.anon = 0
        decision = self.hooks.retention(self, request, now)
        self.apply_retention(request, decision, now)

    # ---- retention -------------------------------------------------------------------
    def apply_retention(self, request: Request, decision: Retention, now: float) -> None:
        node = request.lock
        request.lock = None
        if node is None:
            return
        kind = decision.kind
        if kind == "pin" and decision.ttl > 0:
            old = self.pins.pop(request.workflow, None)
            # the request's lock becomes the pin: same reference, no longer a user
            self.kv.acquire(node, now, user=False)
            self.kv.unlock(node, now)
            if old is not None:
                self.kv.unlock(old.node, now, user=False)
            pin = Pin(node, now + decision.ttl)
            self.pins[request.workflow] = pin
            self.new_pins.append((request.workflow, pin))
            if decision.host_copy and self.host is not None:
                self._copy_node_to_host(node, now)
            return
        if kind == "offload" and self.host is not None:
            self._copy_node_to_host(node, now)
            if decision.prefetch_at is not None:
                self.new_prefetches.append((max(now, decision.prefetch_at), _path_runs(node)))
        self.kv.unlock(node, now)
        if kind == "drop" and node.ref == 0 and not node.children:
            self.kv.drop(node)

    def prefetch(self, runs: Sequence[Run], now: float) -> int:
        """Load from the host tier the part of ``runs`` not on the GPU, leaving it
        cached and evictable, so that the next call hits. Returns blocks loaded."""
        if self._folded or self._mixed:
            self.sync(now)
        if self.host is None:
            return 0
        have = self.kv.match_blocks(runs)
        load = self.host.match_blocks(runs) - have
        if load <= 0 or not self.kv.allocate(load, now):
            return 0
        node, _ = self.kv.lock(runs, now, user=False)
        loaded, _ = take_runs(skip_runs(runs, have), load)
        new_node, added = self.kv.insert(node, loaded, now, user=False)
        self.kv.unlock(node, now, user=False)
        self.kv.adopt(added, now)
        self.kv.release_anonymous(load - added, now)
        self.kv.unlock(new_node, now, user=False)
        start = max(now, self._link_free_at)
        self._link_free_at = start + self.cost.host_transfer_time(load * self.block_bytes)
        return load

    def unpin(self, workflow: str, now: float) -> bool:
        """Release a workflow's pin (TTL expired, pressure, or the policy said so)."""
        if self._folded or self._mixed:
            self.sync(now)
        pin = self.pins.pop(workflow, None)
        if pin is None:
            return False
        self.kv.unlock(pin.node, now, user=False)
        return True

    def _copy_to_host(self, request: Request, now: float) -> None:
        if request.lock is not None:
            self._copy_node_to_host(request.lock, now)

    def _copy_node_to_host(self, node: KVNode, now: float) -> None:
        """Copy the path ending at ``node`` into the host tier (what is not there yet)."""
        host = self.host
        assert host is not None
        runs = _path_runs(node)
        have = host.match_blocks(runs)
        total = sum(r[2] for r in runs)
        missing = total - have
        if missing <= 0 or missing > host.capacity:
            return
        if not host.allocate(missing, now):
            return
        host_node, _ = host.lock(runs, now, user=False)
        new_node, added = host.insert(host_node, skip_runs(runs, have), now, user=False)
        host.unlock(host_node, now, user=False)
        host.adopt(added, now)
        host.release_anonymous(missing - added, now)
        host.unlock(new_node, now, user=False)
        start = max(now, self._link_free_at)
        self._link_free_at = start + self.cost.host_transfer_time(missing * self.block_bytes)

    # ---- timing ----------------------------------------------------------------------
    def _step_time(self, batch: list[tuple[Request, int]]) -> float:
        tokens = 0
        attn = 0.0
        kv_read = 0
        for request, q in batch:
            c = request.computed
            tokens += q
            attn += q * (c + (q + 1) / 2)
            kv_read += c + q
        return self.cost.step_time(tokens, attn, kv_read, len(batch))

    def _decode_run_length(self, now: float, batch: list[tuple[Request, int]]) -> int:
        """Steps of pure decode that can run as one event (0 or 1 means single step)."""
        running = self.running
        if len(batch) != len(running):
            return 0  # someone is loading or did not fit: step by step
        if (
            self.waiting
            and not self.blocked_on_memory
            and len(running) < self.config.max_num_seqs
        ):
            return 0  # a waiting call might join next step
        bt = self.block_tokens
        steps = -1  # the fewest output tokens any call has left
        room = -1  # the fewest steps any call can take in the blocks it holds
        held: list[tuple[int, int]] = []  # (tokens in KV, blocks held) per call
        for request, q in batch:
            computed = request.computed
            total = request.prompt_tokens + request.generated
            if q != 1 or total - computed != 1:
                return 0
            # A run applies only what every step of it does (one token each): the step
            # that ends a prompt also times the first token, caches the prompt's last
            # block and ends a recomputation, so that step is taken on its own.
            keyed = request.keyed_blocks
            if (
                request.generated == 0
                or request.recompute_base >= 0
                or request.locked_blocks < (total // bt if total // bt < keyed else keyed)
            ):
                return 0
            left = request.output_tokens - request.generated
            if steps < 0 or left < steps:
                steps = left
            blocks = request.locked_blocks + request.anon
            fits = blocks * bt - computed
            if room < 0 or fits < room:
                room = fits
            held.append((computed, blocks))
        if steps <= 1:
            return 0
        # Reserve blocks for the whole run, from free blocks only: shorten it to the
        # steps whose new blocks are free. A step that must evict (or give up a pin) is
        # taken on its own, at its own time, as stepping would: a run that evicted at
        # its start would lose cached blocks that a call admitted at a cut, or a
        # router's prefix match during the run, would still have found.
        if steps > room:  # some call needs a new block within the run
            free = self.kv.free_blocks
            if free == 0:
                # No step past the first call's last held token: the largest k with
                # _run_need(k) == 0 is `room` (the bisection below finds the same).
                steps = room if room > 1 else 1
            elif _run_need(held, steps, bt) > free:
                low, high = 1, steps  # need(low) <= free < need(high)
                while high - low > 1:
                    mid = (low + high) // 2
                    if _run_need(held, mid, bt) <= free:
                        low = mid
                    else:
                        high = mid
                steps = low
            if steps <= 1:
                return 0
            self._reserve(batch, steps, now)
        return steps

    def _reserve(self, batch: list[tuple[Request, int]], steps: int, now: float) -> None:
        """Take the free blocks a run of ``steps`` steps needs (no eviction)."""
        bt = self.block_tokens
        needs = [
            max(0, -(-(r.computed + steps) // bt) - r.locked_blocks - r.anon) for r, _ in batch
        ]
        total = sum(needs)
        if total == 0:
            return
        assert total <= self.kv.free_blocks
        allocated = self.kv.allocate(total, now)
        assert allocated
        for (request, _), need in zip(batch, needs, strict=True):
            request.anon += need
            self._anon_added(request, need, now)

    # ---- lifecycle ---------------------------------------------------------------------
    def fail(self, now: float) -> list[Request]:
        """The replica died: mark it down and lose its step, its pins and all its KV
        (GPU and host tier). Returns the calls it held, running and waiting, by
        ``seq``, reset to start again elsewhere (their output so far is lost; the
        replica that takes one counts its prompt as recomputed). The runtime sets
        ``up`` again when the replica returns, with an empty cache."""
        if self._folded or self._mixed:
            self.sync(now)
            self._folded = []
            self._mixed = []
        self.up = False
        self.busy = False
        self.version += 1  # the step in flight never ends
        self._batch = []
        self._ended_run = []
        self._run_steps = 0
        held = sorted(self.running + self.waiting, key=lambda r: r.seq)
        self.running.clear()
        self.waiting.clear()
        self._clear_queue_tokens()
        for request in held:
            self._release_kv(request, now)
            request.preempted_computed = request.computed
            request.computed = 0
            request.generated = 0
            request.first_token_at = -1.0
            request.ready_at = 0.0
        self.drain_pins(now)
        self.new_pins.clear()
        self.new_prefetches.clear()
        self.kv.evict(self.kv.used_blocks, now)
        if self.host is not None:
            self.host.evict(self.host.used_blocks, now)
        self._link_free_at = now
        self.blocked_on_memory = False
        return held

    def is_idle(self) -> bool:
        return not self.busy and not self.waiting and not self.running

    def drain_pins(self, now: float) -> None:
        for workflow in list(self.pins):
            self.unpin(workflow, now)


def output_run(request: Request, block_tokens: int) -> Run | None:
    """A finished call's full output blocks, named as the workflow's next block ids
    (the convention of docs/workloads.md, so the next call's prompt hits them)."""
    total_blocks = (request.prompt_tokens + request.generated) // block_tokens
    count = total_blocks - request.keyed_blocks
    if count <= 0:
        return None
    last = request.runs[-1] if request.runs else None
    if last is not None and last[0].startswith("w:"):
        return (last[0], last[1] + last[2], count)
    return ("w:" + request.workflow, 0, count)


DECODE_ALLOWANCE = 256
"""Output tokens a router assumes for a call still running or queued."""


def _run_need(held: list[tuple[int, int]], steps: int, block_tokens: int) -> int:
    """New blocks a run of ``steps`` decode steps needs, given each call's (tokens in
    KV, blocks held)."""
    need = 0
    for computed, blocks in held:
        more = -(-(computed + steps) // block_tokens) - blocks
        if more > 0:
            need += more
    return need


def _remaining(request: Request) -> int:
    return request.total_tokens - request.computed + DECODE_ALLOWANCE


def _path_runs(node: KVNode) -> tuple[Run, ...]:
    """Runs from the root down to ``node``, merged where consecutive."""
    chain: list[KVNode] = []
    n: KVNode | None = node
    while n is not None and n.parent is not None:
        chain.append(n)
        n = n.parent
    out: list[Run] = []
    for n in reversed(chain):
        if out and out[-1][0] == n.namespace and out[-1][1] + out[-1][2] == n.first:
            ns, first, count = out[-1]
            out[-1] = (ns, first, count + n.count)
        else:
            out.append((n.namespace, n.first, n.count))
    return tuple(out)
