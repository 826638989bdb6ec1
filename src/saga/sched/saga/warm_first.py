"""Warm first: at a gateway's queue in front of an engine that takes no priority.

An engine such as llama.cpp takes no per-request priority and never preempts: whatever the
gateway sends runs to its end. The gateway then holds the calls beyond the replica's
concurrency in its own queue, and the order of that queue is the only order the policy
gets (docs/engines.md, "Warm first at the gateway's queue"). There the queue is a
non-preemptive server, where the rule that shortens the mean wait is shortest job first;
what a gateway knows of a call's length before it runs is its prefill, and a call whose
prefix the replica holds (a workflow's later call, its previous context cached) prefills
only its new tokens, a fraction of a cold call's whole prompt. SAGA's within-tenant key
(the workflow's expected remaining work) holds the cache only inside the call's predicted
service, beside the agent graph's expected rest of the workflow, which can outweigh it: on
a quiet machine cold first calls went ahead of warm later calls (runs/real-llama-s33), and
the time retention saved upstream was spent waiting here.

``cold`` is the key element that puts a warm call ahead: 1 for a call less than half of
whose prompt blocks are cached on the replica (the gateway's estimate of what it sent
there), 0 for a warm one. Half separates the two kinds a gateway sees: a later call of an
agent session finds its whole previous context cached (83.8 % of its prompt on average in
runs/real-llama-s33), a first call at most a shared system prompt (at most 3 % there).
Fair share stays first (the tenant's element precedes it, and the gateway's fair queue
chooses the tenant), and a cold call yields to warm ones only for its first ``limit``
seconds of waiting: past them the element is 0 and the call keeps its place by remaining
work and its aging, so no stream of warm calls starves a new workflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saga.sched.view import CallView, ReplicaView


def cold(replica: ReplicaView, request: CallView, waited: float, limit: float) -> int:
    """1 when less than half of ``request``'s prompt blocks are cached on ``replica`` and it
    has waited less than ``limit`` seconds, else 0."""
    if waited >= limit:
        return 0
    blocks = -(-request.prompt_tokens // replica.block_tokens)
    return 1 if 2 * replica.cached_blocks_for(request.runs) < blocks else 0
