"""The Ray adapter of the scheduler interface: a Serve replica as SAGA's policy sees it.

A :class:`RayReplicaView` is the gateway's :class:`~saga.gateway.view.RemoteReplicaView`
(this router's own record of the calls it sent, an LRU index of the prefixes it sent,
the pins the policy asked for) plus what the replica itself reports through Ray Serve's
``record_routing_stats()`` (:class:`ReplicaStats`). What is exact and what is not:

* ``running``: the calls *this router* sent there whose response has not ended (exact
  for this router; other router replicas' calls are seen only through the stats);
* ``waiting``: empty -- Ray Serve holds calls in the router's pending queue, not per
  replica, and a replica's own queue is in the stats;
* ``load()``, ``outstanding_tokens()`` and the queue token sums: the larger of this
  router's count and the replica's last report (a report is at most
  ``request_routing_stats_period_s`` old, so it lags; this router's count does not);
* token counts: the router estimates a prompt from its text (characters / 4) and scales
  it by the engines' token scale learned from the replicas' reports (the prompt tokens
  they answered, as estimated and as counted: ``SagaRouting(learn_token_scale=True)``,
  as the gateway's ``learn_token_scale``), so the policy counts in the engine's tokens;
* ``kv``: this router's prefix index, bounded by the capacity the replica reports; when
  the replica reads its engine's KV events (a vLLM replica subscribed to them), a match
  is cut to what the engine still holds of the workflow that sent those blocks, as the
  replica last reported it (:mod:`.prefixes`; at most one stats period old);
* ``up``: Ray Serve lists the replica as running (a dead replica leaves the list).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saga.gateway.view import RemoteReplicaView
from saga.integrations.ray.prefixes import ReportedPrefixes


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """What a replica reports of itself (``record_routing_stats()``), as plain data."""

    waiting: int = 0
    running: int = 0
    outstanding_tokens: int = 0
    demand_tokens: int = 0
    backlog_tokens: int = 0
    kv_capacity_blocks: int = 0
    kv_used_blocks: int = 0
    #: The prompt tokens of the calls this replica answered, as the routers estimated
    #: them and as its engine counted them (``usage.prompt_tokens``): the routers learn
    #: the engines' token scale from them (0 and 0: no answer with a count yet).
    estimated_tokens: int = 0
    engine_tokens: int = 0
    #: From the engine's KV events (None: the replica reads none): for each workflow it
    #: served lately, the tokens of its last prompt the engine still holds from the
    #: start, in the engine's tokens (:class:`~.vllm.PrefixReport`).
    prefix_tokens: Mapping[str, int] | None = None

    @classmethod
    def read(cls, raw: dict[str, Any] | None) -> ReplicaStats:
        """From a stats dict (unknown keys ignored, missing ones 0)."""
        if not raw:
            return cls()
        fields = cls.__dataclass_fields__
        counts: dict[str, Any] = {k: int(v) for k, v in raw.items()
                                  if k in fields and k != "prefix_tokens"}
        prefixes = raw.get("prefix_tokens")
        if isinstance(prefixes, Mapping):
            counts["prefix_tokens"] = {str(w): int(t) for w, t in prefixes.items()}
        return cls(**counts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.prefix_tokens is None:
            del out["prefix_tokens"]
        else:
            out["prefix_tokens"] = dict(self.prefix_tokens)
        return out


class RayReplicaView(RemoteReplicaView):
    """One slot of the policy's replica list, bound to a Ray Serve replica (or to none)."""

    def __init__(
        self, index: int, capacity_blocks: int, block_tokens: int, block_bytes: int = 0,
        *, max_num_batched_tokens: int = 8192,
    ) -> None:
        # Ray Serve caps a replica's calls itself (max_ongoing_requests): the view never
        # queues, every call it is told of is running.
        super().__init__(index, capacity_blocks, block_tokens, block_bytes,
                         max_concurrency=1 << 30, max_num_batched_tokens=max_num_batched_tokens)
        self.replica_id: str | None = None
        self.up = False
        self.stats = ReplicaStats()

    def bind(self, replica_id: str) -> None:
        """The slot now stands for ``replica_id`` (a new replica: nothing is known yet)."""
        if self.replica_id != replica_id:
            self.replica_id = replica_id
            self.stats = ReplicaStats()
            scale = self.kv.scale
            self.kv = type(self.kv)(self.kv.capacity)
            self.kv.scale = scale  # the router's learned token scale outlives a replica
            self.pins.clear()
        self.up = True

    def report(self, stats: ReplicaStats) -> None:
        self.stats = stats
        if stats.kv_capacity_blocks and stats.kv_capacity_blocks != self.kv.capacity:
            self.kv.capacity = stats.kv_capacity_blocks
        if stats.prefix_tokens is None:
            self.kv.events = None  # no events (or no longer): the estimate alone
            return
        # The view counts in the engine's tokens when the router learns the token scale
        # (the engine's report as is); else in its own estimate, by this replica's ratio.
        ratio = 1.0
        if self.kv.scale is None and stats.estimated_tokens > 0 and stats.engine_tokens > 0:
            ratio = stats.estimated_tokens / stats.engine_tokens
        self.kv.events = ReportedPrefixes(stats.prefix_tokens, self.block_tokens, ratio)

    # ---- what a policy reads: this router's count or the replica's report -------------
    def load(self) -> int:
        return max(super().load(), self.stats.waiting + self.stats.running)

    def outstanding_tokens(self) -> int:
        return max(super().outstanding_tokens(), self.stats.outstanding_tokens)
