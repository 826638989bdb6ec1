"""Pieces several baselines share: online tool-time estimates, routers, run helpers.

Nothing here reads a clock: every observation carries its time.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence

from saga.engine.kvcache import KVNode, RadixKV, Run, skip_runs
from saga.sched.policy import CallInfo, Router

INF = float("inf")


class SortedWindow:
    """The last ``size`` samples, kept sorted for quantiles and empirical CDFs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: deque[float] = deque()
        self.sorted: list[float] = []
        self._sum = 0.0

    def __len__(self) -> int:
        return len(self.sorted)

    def add(self, value: float) -> None:
        self._order.append(value)
        bisect.insort(self.sorted, value)
        self._sum += value
        if len(self._order) > self.size:
            old = self._order.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]
            self._sum -= old

    def mean(self) -> float:
        return self._sum / len(self.sorted)

    def quantile(self, q: float) -> float:
        """The lower empirical ``q``-quantile (a sample, no interpolation)."""
        index = min(len(self.sorted) - 1, max(0, int(q * len(self.sorted))))
        return self.sorted[index]


class ToolTimes:
    """Online tool-duration statistics, learned from the calls a policy observes.

    A sample is the time between a call's finish and the readiness of the
    workflow's next call: the tool (and any human) time in between. At a call's
    finish a policy does not know which tool the model is about to call (our
    :class:`CallInfo` names only the tool that ran *before* a call), so samples
    are keyed by *call site* as SAGA's graph keys them (docs/saga.md): (agent, tool before the
    finishing call). Lookups fall back from the call site to the agent to all
    calls when a level has fewer than ``min_samples``.
    """

    def __init__(self, window: int = 1000, min_samples: int = 100) -> None:
        self.window = window
        self.min_samples = min_samples
        self._by_key: dict[tuple[str, ...], SortedWindow] = {}
        self.all = SortedWindow(window)
        # workflow -> (finish time, call site of the call that finished)
        self._last_finish: dict[str, tuple[float, tuple[str, str]]] = {}

    @staticmethod
    def site(call: CallInfo) -> tuple[str, str]:
        return (call.agent, call.tool or "")

    def call_finished(self, call: CallInfo, now: float) -> None:
        self._last_finish[call.workflow] = (now, self.site(call))

    def call_ready(self, call: CallInfo, now: float) -> None:
        last = self._last_finish.pop(call.workflow, None)
        if last is None:
            return  # the workflow's first call, or a parallel branch already counted
        finished_at, (agent, tool) = last
        gap = now - finished_at
        for key in (("site", agent, tool), ("agent", agent)):
            samples = self._by_key.get(key)
            if samples is None:
                samples = self._by_key[key] = SortedWindow(self.window)
            samples.add(gap)
        self.all.add(gap)

    def workflow_finished(self, workflow: str) -> None:
        self._last_finish.pop(workflow, None)

    def samples_for(self, call: CallInfo) -> SortedWindow | None:
        """The most specific sample set with enough samples, or None (cold start)."""
        agent, tool = self.site(call)
        for key in (("site", agent, tool), ("agent", agent)):
            samples = self._by_key.get(key)
            if samples is not None and len(samples) >= self.min_samples:
                return samples
        return self.all if len(self.all) >= self.min_samples else None


class WorkflowActivity:
    """Which workflows are live and how many of their calls are ready or running."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}  # live workflow -> calls ready or running
        # shared prefix namespace ("s:name") -> live workflows whose prompts use it
        self.shared_users: dict[str, set[str]] = {}

    def call_ready(self, call: CallInfo) -> None:
        self.active[call.workflow] = self.active.get(call.workflow, 0) + 1
        for namespace, _, _ in call.runs:
            if namespace.startswith("s:"):
                self.shared_users.setdefault(namespace, set()).add(call.workflow)

    def call_finished(self, call: CallInfo) -> None:
        if call.workflow in self.active:
            self.active[call.workflow] -= 1

    def workflow_finished(self, workflow: str) -> None:
        self.active.pop(workflow, None)
        for namespace in [ns for ns, users in self.shared_users.items() if workflow in users]:
            users = self.shared_users[namespace]
            users.discard(workflow)
            if not users:
                del self.shared_users[namespace]

    def is_live(self, workflow: str) -> bool:
        return workflow in self.active

    def is_running(self, workflow: str) -> bool:
        return self.active.get(workflow, 0) > 0


def node_workflow(node: KVNode) -> str | None:
    """The workflow a workflow-local KV node belongs to, None for shared prefixes."""
    return node.namespace[2:] if node.namespace.startswith("w:") else None


class LeastOutstandingRouter(Router):
    """Fewest calls queued or running (``Replica.load``); ties to the lowest index."""

    name = "least-outstanding"

    def place(self, call: CallInfo, now: float) -> int:
        return min(self.up_replicas(), key=lambda i: (self.ctx.replicas[i].load(), i))


def run_blocks(runs: Sequence[Run]) -> int:
    return sum(count for _, _, count in runs)


class RoutedPrefixIndex:
    """A router's approximate prefix index: one LRU tree per replica of the prompts it
    routed there, never told about engine evictions (SGLang's cache-aware router, llm-d's
    prefix scorer). A full tree drops its least recently used leaves."""

    def __init__(self, capacity_blocks: list[int]) -> None:
        self.trees = [RadixKV(max(1, c)) for c in capacity_blocks]

    def matched(self, replica: int, runs: tuple[Run, ...]) -> int:
        return self.trees[replica].match_blocks(runs)

    def add(self, replica: int, runs: tuple[Run, ...], now: float) -> None:
        tree = self.trees[replica]
        node, hit = tree.lock(runs, now, user=False)
        rest = skip_runs(runs, hit)
        need = run_blocks(rest)
        if need and tree.allocate(need, now):
            new_node, _ = tree.insert(node, rest, now, user=False)
            tree.unlock(node, now, user=False)
            # the inserted blocks (new or found meanwhile) are all accounted in the tree
            tree.release_anonymous(need, now)
            node = new_node
        tree.unlock(node, now, user=False)
