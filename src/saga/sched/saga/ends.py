"""End prediction: when a workflow that no one says has ended most likely has.

A gateway learns that a workflow ended from its client's end marker (``x-saga-end``)
or, failing one, from its idle timeout (600 s by default). A Claude Code session ends
with a human who never says so: waiting for the timeout, the memory gate would count
the session's context as held for ten minutes after its last call, and keep new
sessions out. SAGA predicts the end from its Agent Execution Graph instead.

After a call at node ``n`` finishes, with no call of the workflow since, the chance
that it has ended is, by Bayes::

    P(end | no call within t) = (1 - c) / ((1 - c) + c' * S(t))

with ``c`` the graph's P(continue) at ``n``, ``c'`` the part of it that the call's
response leaves possible, and ``S`` the survival function of the time until the next
call given one comes. What the response shows narrows it (``CallInfo.turn_ended``):
a response that invokes a tool means the client will call again (no end predicted);
one that ends the turn leaves only a human's return (``c' = c x P(next node is a
human message)``, ``S`` from the learned human think times); unknown (a runtime that
does not report it) leaves the whole gap mixture. The workflow is taken as ended at the
first ``t`` where that reaches ``end_confidence``: the gate then releases its working set,
retention drops its KV, and eviction takes it first. A call that comes after all puts
it back, as a new workflow's would be.

An agent type whose workflows have been seen to end with the marker (and never
without) needs no prediction: its ends will be said. Pins and eviction act on no
prediction before ``min_samples`` ends of the agent type have been observed (cold start:
a wrong guess loses KV). The memory gate acts from the first call, on the graph's priors
(``gate_end_min_ends``), while no user of the agent type has been seen to come back after
a turn ended: ends without a marker are seen only after the idle timeout, and waiting for
them let finished single-shot work fill the gate for ten minutes (docs/saga.md).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from saga.core.workflow import HUMAN_TOOL
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import AgentGraph, node_tool


def time_to_end(graph: AgentGraph, node: str, turn_ended: bool | None,
                confidence: float, min_ends: int = 1) -> float:
    """Seconds after a call at ``node`` finishes until its workflow, silent since, has
    ended with probability ``confidence`` (0: at once; inf: never predicted). Nothing is
    predicted before ``min_ends`` ends of the agent have been observed: the priors alone
    know nothing of how its users leave."""
    if turn_ended is False or graph.ends < min_ends:
        return math.inf  # the response invoked a tool: the client calls again
    gap = graph.gap(node)
    # fresh, not the gap's (kept between refreshes): each end seen moves it most early on
    c = graph.p_continue(node)
    # A response that ends the turn leaves only a human's return, but which share of the
    # returns are a human's is known only once some call after the node has been seen:
    # before that, the whole gap prior (else the first silence of an agent nobody has yet
    # seen come back would read as a certain end).
    human_only = bool(turn_ended) and graph.knows_successors(node)
    if human_only:
        human = sum(p for dst, p in graph.successors(node).items()
                    if node_tool(dst) == HUMAN_TOOL)
        back = c * human
    else:
        back = c
    end = 1.0 - c
    if back <= 0.0 or end / (end + back) >= confidence:
        return 0.0
    if end <= 0.0:
        return math.inf
    # S(t) <= end (1 - q) / (q back), so t is the (1 - that) quantile of the return time
    survive = end * (1.0 - confidence) / (confidence * back)
    if human_only:
        return graph.duration(HUMAN_TOOL).quantile(1.0 - survive)
    return gap.quantile(1.0 - survive)


def end_wait(graph: AgentGraph, node: str, turn_ended: bool | None, config: SagaConfig,
             said: bool, min_ends: int | None = None) -> float:
    """:func:`time_to_end` under ``config``: never when end prediction is off or the
    agent type's ends are ``said`` by its client (:class:`EndMarkers`); ``min_ends``
    seen ends first (default ``min_samples``, what pins and eviction wait for)."""
    if not config.predict_end or said:
        return math.inf
    seen = config.min_samples if min_ends is None else min_ends
    return time_to_end(graph, node, turn_ended, config.end_confidence, seen)


def gate_min_ends(graph: AgentGraph, config: SagaConfig) -> int:
    """Seen ends the memory gate needs before acting on a predicted end in ``graph``:
    ``gate_end_min_ends`` while no user of its agent type was seen to come back after a
    turn ended, else ``min_samples`` as pins (the returns seen first are the short ones,
    the long ones have not come back yet: the prior would uncount sessions that do)."""
    if graph.returns_after(HUMAN_TOOL):
        return config.min_samples
    return config.gate_end_min_ends


def pause_wait(graph: AgentGraph, node: str, turn_ended: bool | None,
               config: SagaConfig) -> float:
    """Seconds of silence after a call at ``node`` whose response invoked a tool (no end is
    predicted: the client calls again) after which the memory gate stops counting its
    workflow anyway: ``gate_pause_quantile`` of the gaps learned after ``node``. A session
    whose tool waits hours on a human holds no KV worth its place in the count by then
    (retention has offloaded or dropped it); it is counted again when it calls. A silence
    after a turn ended is left to the end prediction and its guard against the short
    returns learned first (:func:`gate_min_ends`)."""
    q = config.gate_pause_quantile
    if q is None or turn_ended is not False or not config.memory_gate:
        return math.inf
    return graph.gap(node).quantile(q)


def gate_wait(graph: AgentGraph, node: str, turn_ended: bool | None, config: SagaConfig,
              said: bool) -> float:
    """Seconds after a call at ``node`` finishes until the memory gate of a ``+gate``
    baseline stops counting its workflow, silent since: the sooner of the predicted end
    pins act on and the one the gate acts on (:func:`gate_min_ends`). Not the pause
    (:func:`pause_wait`), which SAGA's gate adds: a baseline without SAGA's retention and
    prefetch finds a paused session's KV gone when it comes back, and the pause made
    ``sglang+gate`` and ``llm-d+gate`` slower (docs/claude-code-load.md)."""
    wait = end_wait(graph, node, turn_ended, config, said)
    return min(wait, end_wait(graph, node, turn_ended, config, said,
                              gate_min_ends(graph, config)))


@dataclass
class EndWatch:
    """Predicted end times, earliest first; an entry is stale once its workflow has
    called again (its epoch moved on)."""

    _heap: list[tuple[float, int, str, int]] = field(default_factory=list)
    _seq: int = 0

    def watch(self, at: float, workflow: str, epoch: int) -> None:
        if math.isfinite(at):
            self._seq += 1
            heapq.heappush(self._heap, (at, self._seq, workflow, epoch))

    def due(self, now: float) -> list[tuple[str, int]]:
        """The (workflow, epoch) entries whose predicted end has come."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, workflow, epoch = heapq.heappop(heap)
            out.append((workflow, epoch))
        return out


@dataclass
class EndMarkers:
    """Per (tenant, agent type): how many of its ends came with the client's marker, and
    without (one tenant's clients never decide whether another's ends are predicted)."""

    marked: dict[tuple[str, str], int] = field(default_factory=dict)
    unmarked: dict[tuple[str, str], int] = field(default_factory=dict)

    def observe(self, key: tuple[str, str], marked: bool) -> None:
        counts = self.marked if marked else self.unmarked
        counts[key] = counts.get(key, 0) + 1

    def said(self, key: tuple[str, str]) -> bool:
        """Whether ``key``'s ends are said by its client (seen marked, never not)."""
        return self.marked.get(key, 0) > 0 and self.unmarked.get(key, 0) == 0
