"""What the gateway knows of a remote replica, shaped like an engine-model replica.

Policies observe :class:`saga.engine.replica.Replica` objects through a handful of
members; :class:`RemoteReplicaView` offers the same members from the gateway's own
bookkeeping so that policies run unchanged. What is exact and what is approximate:

* ``waiting``: calls this gateway holds for the replica (its concurrency limit was
  reached) -- exact for this gateway, blind to other gateways;
* ``running``: calls this gateway sent and whose response has not ended -- the
  replica may still be queueing some of them internally;
* the queue token sums of :class:`saga.engine.replica.QueueTokens`: over those two
  lists, kept by the ``add_*``/``remove_*`` verbs (the gateway moves calls only
  through them); its calls' ``computed`` and ``generated`` stay 0 (it does not see
  the engine's progress), so the context is 0 and each call counts its whole prompt;
* ``load()``, ``outstanding_tokens()``: from those two lists, with each call's
  ``max_tokens`` as its output (outstanding work is not decremented as tokens stream);
* ``cached_blocks_for(runs)`` and ``kv``: an LRU index of the block hashes this
  gateway routed to the replica, bounded by the replica's KV capacity. It does not
  see evictions made by the engine for other traffic, nor pins, so it overestimates
  hits under memory pressure; it never invents a prefix that was not sent there;
* ``up``: the last health check (or a failed call) said so;
* ``host``: a host tier of the preset's host capacity for backends that offload
  (llama.cpp: slot save and restore), else None; ``locked_blocks`` and
  ``anonymous_blocks`` are 0 (the gateway does not see the engine's allocations).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from saga.engine.kvcache import Run
from saga.engine.replica import QueueTokens, Request


class ApproxPrefixIndex:
    """An LRU set of block names (run keys, one block each) with a block capacity."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[tuple[str, int], None] = OrderedDict()

    @property
    def used_blocks(self) -> int:
        return len(self._blocks)

    @property
    def cached_blocks(self) -> int:
        """Blocks indexed, as the engine's ``KVCache.cached_blocks`` (placement reads it of
        a host tier to skip matching an empty one)."""
        return len(self._blocks)

    @property
    def free_blocks(self) -> int:
        return self.capacity - len(self._blocks)

    @property
    def available_blocks(self) -> int:
        return self.capacity

    @property
    def locked_blocks(self) -> int:
        """Blocks held by running calls: not known here (the engine's own business)."""
        return 0

    @property
    def anonymous_blocks(self) -> int:
        return 0

    def match_blocks(self, runs: Sequence[Run]) -> int:
        """Blocks of ``runs``' prefix that were sent to this replica and not aged out."""
        blocks = self._blocks
        matched = 0
        for namespace, first, count in runs:
            for i in range(first, first + count):
                if (namespace, i) not in blocks:
                    return matched
                matched += 1
        return matched

    def add(self, runs: Sequence[Run]) -> None:
        """Record ``runs`` as cached, most recently used; age out the oldest."""
        blocks = self._blocks
        for namespace, first, count in runs:
            for i in range(first, first + count):
                key = (namespace, i)
                if key in blocks:
                    blocks.move_to_end(key)
                else:
                    blocks[key] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)


class RemoteReplicaView(QueueTokens):
    """A backend as a policy sees it (the members of Replica that policies read)."""

    def __init__(
        self, index: int, capacity_blocks: int, block_tokens: int, block_bytes: int = 0,
        host_blocks: int | None = None,
    ) -> None:
        self.index = index
        self.up = True
        self.block_tokens = block_tokens
        self.block_bytes = block_bytes
        #: The host tier, for backends that have one (llama.cpp's slot files): what the
        #: policy may offload to; its contents are not tracked (nothing matches there).
        self.host = ApproxPrefixIndex(host_blocks) if host_blocks is not None else None
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self._clear_queue_tokens()
        self.kv = ApproxPrefixIndex(capacity_blocks)
        self.pins: dict[str, float] = {}  # workflow -> expiry (gateway clock), as asked

    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- the gateway's verbs: a call moves only through these (they keep the sums) ----
    def add_running(self, request: Request) -> None:
        self.running.append(request)
        self._count_running(request, 1)

    def remove_running(self, request: Request) -> None:
        self.running.remove(request)
        self._count_running(request, -1)

    def add_waiting(self, request: Request) -> None:
        self.waiting.append(request)
        self._count_waiting(request, 1)

    def remove_waiting(self, request: Request) -> None:
        self.waiting.remove(request)
        self._count_waiting(request, -1)

    def outstanding_tokens(self) -> int:
        return sum(r.prompt_tokens + r.output_tokens for r in self.waiting) + sum(
            r.prompt_tokens + r.output_tokens for r in self.running
        )

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        return self.kv.match_blocks(runs)

    def unpin(self, workflow: str, now: float) -> None:
        """Forget a pin the policy asked for (the backend lets it lapse)."""
        self.pins.pop(workflow, None)
