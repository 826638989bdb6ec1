"""``belady``: Bélády's offline MIN eviction for prefix-tree KV (a bound, not deployable).

Source (docs/baselines.md section 7): Bélády's MIN evicts the item whose next
reference is furthest in the future. Adapted to a prefix tree: a block's next use
is never later than that of its descendants, so the furthest next use is always
at a leaf; evicting evictable leaves furthest-next-use first is MIN and keeps the
cache prefix-closed.

Next use, known offline. When a call finishes, ``CallInfo.next_gap`` (the tool
time before the workflow's next call, read from the trace) announces the
workflow's next use at ``now + next_gap``; a workflow's next use is the earliest
announced use not yet issued, and never (evicted first) when there is none. Blocks
that the next call's prompt (``CallInfo.next_runs``) does not contain, such as a
context the agent has compacted away, are never used again. While a
call of the workflow is ready, queued or running its KV is in use (kept
first). A workflow-local node takes its workflow's next use; a shared named prefix
takes the soonest next use among the live workflows that use it, and never when
none does (workflows that have not arrived yet are not known to the policy;
shared prefixes are short, so this costs little). Ties, e.g. among blocks never
used again, go to the least recently released (the engine's tie-break; the
docs' "deepest, then most recently freed" is not expressible by a key).

This is one pass with the next uses the run itself produces (the issue time of
the next call, not its admission); the docs' multi-pass fixpoint is left to the
benchmark driver. :class:`NextUse` holds that knowledge, so that a bound can pair
MIN with any scheduling: ``belady`` is ``vllm-affinity`` (first come first served,
release, session-hash routing) with MIN eviction, so the comparison with it isolates
eviction for policies that route and queue as vLLM does; ``saga-belady``
(:mod:`saga.sched.baselines.saga_belady`) is SAGA's scheduling with MIN.
"""

from __future__ import annotations

from saga.engine.kvcache import EvictionOrder, KeyedEviction, KVNode
from saga.sched.baselines._shared import INF, WorkflowActivity
from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import CallInfo, Policy, WorkflowInfo
from saga.sched.view import CallView, ReplicaView
from saga.sched.vllm import ConsistentHashRouter


class NextUse:
    """Each cached leaf's next use, read from the trace (offline): Bélády's MIN key."""

    def __init__(self) -> None:
        self.activity = WorkflowActivity()
        # workflow -> times of its calls announced by finished calls and not yet issued
        self.future_uses: dict[str, list[float]] = {}
        # workflow -> the blocks the next call's prompt holds (what the next use touches)
        self.next_blocks: dict[str, tuple[tuple[str, int, int], ...]] = {}

    def eviction_order(self, name: str) -> EvictionOrder:
        return KeyedEviction(name, self.eviction_key)

    def eviction_key(self, node: KVNode, now: float) -> float:
        """Smaller is evicted first: minus the time of the node's next use."""
        return -self.node_next_use(node, now)

    def node_next_use(self, node: KVNode, now: float) -> float:
        namespace = node.namespace
        if namespace.startswith("w:"):
            workflow = namespace[2:]
            use = self.workflow_next_use(workflow, now)
            if use in (INF, -INF) or self._reused(workflow, node):
                return use
            return INF  # the next call does not touch these blocks (compacted context)
        users = self.activity.shared_users.get(namespace, ())
        return min((self.workflow_next_use(w, now) for w in users), default=INF)

    def _reused(self, workflow: str, node: KVNode) -> bool:
        """Whether the workflow's next prompt contains any block of ``node``."""
        runs = self.next_blocks.get(workflow)
        if runs is None:
            return True
        end = node.first + node.count
        return any(
            ns == node.namespace and first < end and node.first < first + count
            for ns, first, count in runs
        )

    def workflow_next_use(self, workflow: str, now: float) -> float:
        if self.activity.is_running(workflow):
            return -INF  # in use now: kept before any announced use, however soon
        uses = self.future_uses.get(workflow)
        return min(uses) if uses else INF

    # ---- what the trace announces, and what the run does --------------------------------
    def call_done(self, request: CallView, now: float) -> None:
        """A call finished (its retention is asked): it announces its workflow's next use."""
        info = request.info
        if info is not None and info.next_gap is not None:
            self.future_uses.setdefault(info.workflow, []).append(now + info.next_gap)
            if info.next_runs is not None:
                self.next_blocks[info.workflow] = info.next_runs

    def call_ready(self, call: CallInfo) -> None:
        self.activity.call_ready(call)
        uses = self.future_uses.get(call.workflow)
        if uses:
            # the announced use this call fulfils (the earliest; they coincide for chains)
            uses.remove(min(uses))

    def call_finished(self, call: CallInfo) -> None:
        self.activity.call_finished(call)

    def workflow_finished(self, workflow: str) -> None:
        self.activity.workflow_finished(workflow)
        self.future_uses.pop(workflow, None)
        self.next_blocks.pop(workflow, None)


class Belady(Policy):
    """Evict the KV whose workflow is next used furthest in the future (offline)."""

    name = "belady"
    offline = True

    def __init__(self) -> None:
        super().__init__(ConsistentHashRouter())
        self.next_use = NextUse()

    # ---- eviction ----------------------------------------------------------------------
    def eviction_order(self, replica_index: int) -> EvictionOrder:
        return self.next_use.eviction_order(self.name)

    # ---- retention: learn the next use from the trace ---------------------------------------
    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.next_use.call_done(request, now)
        return RELEASE

    # ---- observations ----------------------------------------------------------------
    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.next_use.call_ready(call)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.next_use.call_finished(call)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.next_use.workflow_finished(workflow.workflow)
