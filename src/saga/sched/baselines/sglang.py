"""``sglang``: SGLang's cache-aware router, longest-prefix-match order, LRU radix eviction.

Source (docs/baselines.md section 2): ``sgl-project/sglang``,
``sgl-model-gateway/src/policies/cache_aware.rs`` and ``tree.rs`` (router),
``python/sglang/srt/managers/schedule_policy.py`` (LPM) and
``python/sglang/srt/mem_cache/radix_cache.py`` (LRU leaf eviction).

Router, for each call:

1. load = calls routed to a replica and not finished (queued or running). If
   ``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold * min``
   the cluster is imbalanced: route to the least-loaded replica.
2. Otherwise match the prompt against the router's own per-replica prefix trees;
   if the best ``matched tokens / prompt tokens > cache_threshold`` route to the
   replica with the longest match, else to the least-loaded replica.
3. Insert the prompt into the chosen replica's tree.

The trees are *approximate*, as in the real router: they hold what was routed,
not what the engine caches, and are never told about engine evictions. Our
traces carry no text, so a tree holds 64-token trace blocks instead of
characters, and ``max_tree_size`` is converted at ~4 characters per token.
Simplifications, stated: the router's tree evicts its least recently used
leaves when an insert would exceed the size limit, instead of a background
sweep every ``eviction_interval`` (120 s); the two agree whenever the limit is
not reached (the CLI default of 2^26 characters is effectively unbounded); ties
between replicas with equally long matches go to the least loaded, then the
lowest index (the real tree returns the most recently inserted tenant).

Inside the replica: ``schedule_policy = "lpm"``, waiting calls sorted by the
length of their cached prefix on that replica, longest first, ties in arrival
order, falling back to first come first served when more than 128 calls wait
(hard-coded in ``_determine_active_policy``). Current SGLang ships ``fcfs`` by
default; LPM is its cache-aware mode, the one docs/baselines.md names. The in-batch
prefix deprioritisation (32/32-token thresholds) is below our 64-token block
and is not modelled. Preemption keeps vLLM's rule (the last running call in
arrival order); eviction is the engine's LRU over radix leaves (least recently
released first, which is SGLang's ``last_access_time`` order for released
nodes).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from saga.engine.kvcache import Run
from saga.sched.baselines._shared import RoutedPrefixIndex, run_blocks
from saga.sched.policy import CallInfo, Policy, PolicyContext, Router
from saga.sched.view import CallView, ReplicaView

CHARS_PER_TOKEN = 4


class SGLangConfig(BaseModel):
    """SGLang router and scheduler knobs; defaults are the gateway's CLI defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cache_threshold: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Route by prefix only when matched/prompt tokens exceeds this "
        "(`--cache-threshold`; library default 0.5).",
    )
    balance_abs_threshold: int = Field(
        64, ge=0,
        description="Imbalanced when max - min load exceeds this (`--balance-abs-threshold`; "
        "library default 32).",
    )
    balance_rel_threshold: float = Field(
        1.5, ge=1.0,
        description="... and max load exceeds this times the min (`--balance-rel-threshold`; "
        "library default 1.1).",
    )
    max_tree_chars: int = Field(
        2**26, ge=1,
        description="Router tree size limit per replica in characters (`--max-tree-size`; "
        "library default 10000), converted at 4 characters per token.",
    )
    lpm_max_queue: int = Field(
        128, ge=0,
        description="Longest-prefix-match ordering only while at most this many calls wait; "
        "first come first served beyond (hard-coded in SGLang).",
    )


#: ``CacheAwareConfig::default()`` of the router library, for reproducing older papers.
SGLANG_LIBRARY_DEFAULTS = SGLangConfig(
    cache_threshold=0.5, balance_abs_threshold=32, balance_rel_threshold=1.1,
    max_tree_chars=10000,
)


class CacheAwareRouter(Router):
    """SGLang's cache-aware router over approximate per-replica prefix trees."""

    name = "cache-aware"

    def __init__(self, config: SGLangConfig) -> None:
        self.config = config

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        tree_tokens = self.config.max_tree_chars // CHARS_PER_TOKEN
        blocks = max(1, tree_tokens // ctx.block_tokens)
        self.index = RoutedPrefixIndex([blocks] * len(ctx.replicas))

    def place(self, call: CallInfo, now: float) -> int:
        ups = self.up_replicas()
        least_loaded = min(ups, key=lambda i: (self._load(i), i))
        if self._imbalanced(ups):
            choice = least_loaded
        else:
            best = max(ups, key=lambda i: (self.matched_blocks(i, call.runs), -self._load(i), -i))
            choice = best if self._match_rate(best, call) > self.config.cache_threshold else (
                least_loaded
            )
        self.index.add(choice, call.runs, now)
        return choice

    def matched_blocks(self, replica: int, runs: tuple[Run, ...]) -> int:
        return self.index.matched(replica, runs)

    def _load(self, replica: int) -> int:
        return self.ctx.replicas[replica].load()

    def _imbalanced(self, ups: list[int]) -> bool:
        loads = [self._load(i) for i in ups]
        low, high = min(loads), max(loads)
        cfg = self.config
        return high - low > cfg.balance_abs_threshold and high > cfg.balance_rel_threshold * low

    def _match_rate(self, replica: int, call: CallInfo) -> float:
        prompt = max(call.prompt_tokens, run_blocks(call.runs) * self.ctx.block_tokens, 1)
        return self.matched_blocks(replica, call.runs) * self.ctx.block_tokens / prompt


class SGLang(Policy):
    """Cache-aware routing, longest-prefix-match order, LRU radix eviction."""

    name = "sglang"

    def __init__(self, config: SGLangConfig | None = None) -> None:
        self.config = config or SGLangConfig()
        self.cache_router = CacheAwareRouter(self.config)
        super().__init__(self.cache_router)

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        # A running call holds a lock on its prefix; running calls keep arrival order so
        # that preemption takes the latest, as in vLLM (SGLang's retraction is not modelled).
        if request.lock is not None or len(replica.waiting) > self.config.lpm_max_queue:
            return (0.0, request.enqueued_at, request.seq)
        cached = replica.cached_blocks_for(request.runs)
        return (-float(cached), request.enqueued_at, request.seq)
