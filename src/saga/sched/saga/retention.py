"""KV retention at a tool boundary: pin, offload, release or drop, by expected value.

When a call finishes and its workflow goes into a tool call, its private KV can

* stay pinned on the GPU for a TTL tau: the next call hits it if the tool returns
  within tau, at the price of holding the memory until then;
* move to the host tier, to come back by ``prefetch_at`` (before the predicted
  return), so the next call reloads it over PCIe instead of recomputing it;
* be released to the evictable cache (it survives if memory is not needed);
* be dropped (freed now), when the workflow is unlikely to call again.

The value of a pin of TTL tau, against the best fallback (offload if there is a
host tier, else release), in seconds:

    gain(tau) = P(return within tau) * fallback_cost - price * share * E[min(gap, tau)]

with ``fallback_cost`` the rebuild time the fallback leaves on return (the reload time
for offload, the recompute time times the chance the released blocks are evicted
for release), ``share`` the part of the replica's KV the pin holds and ``price`` the
shadow price of memory (:func:`shadow_price`). Candidate TTLs are quantiles of the
predicted gap. As waiting work and memory pressure grow, the price grows, the best
TTL shrinks to 0, and retention converges to release: vLLM's throughput-optimal
behaviour (docs/saga.md, "KV retention and eviction").
"""

from __future__ import annotations

from dataclasses import dataclass

from saga.sched.decisions import DROP, RELEASE, Retention
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import Gap

TTL_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class MemoryState:
    """A replica's memory as retention sees it (all in blocks)."""

    capacity: int
    held: int  # locked by calls or pins, or anonymous
    waiting_demand: int  # blocks the waiting calls still need
    waiting_calls: int

    @property
    def pressure(self) -> float:
        return (self.held + self.waiting_demand) / max(self.capacity, 1)


def shadow_price(memory: MemoryState, config: SagaConfig) -> float:
    """Seconds of others' delay per (share of the KV cache x second) held.

    Low and constant while memory is plentiful; above ``pressure_knee`` each waiting
    call adds ``price_per_waiting`` scaled by how far pressure is past the knee.
    """
    knee = config.pressure_knee
    excess = max(0.0, memory.pressure - knee) / (1.0 - knee)
    return config.price_idle + config.price_per_waiting * memory.waiting_calls * excess


def eviction_risk(memory: MemoryState) -> float:
    """Chance that released blocks are evicted before they are needed: the memory
    pressure, clipped to [0, 1] (a crude but monotone proxy)."""
    return min(1.0, max(0.0, memory.pressure))


@dataclass(frozen=True, slots=True)
class RetentionInput:
    """Everything one retention decision depends on."""

    now: float
    ends: bool  # the call was the workflow's last (explicit end mark)
    gap: Gap  # what follows the call (from the graph)
    blocks: int  # private blocks the workflow would hold
    recompute: float  # seconds to recompute them
    reload: float | None  # seconds to reload them from the host; None without a host tier
    memory: MemoryState


def decide(inp: RetentionInput, config: SagaConfig) -> Retention:
    """The retention with the highest expected value (see the module docstring)."""
    if inp.ends or inp.gap.p_continue < config.drop_below:
        return DROP
    if inp.blocks <= 0:
        return RELEASE
    if inp.reload is not None and not config.pin_with_host:
        return _offload(inp, config)  # a host tier, and no pin over it: offload
    price = shadow_price(inp.memory, config)
    share = inp.blocks / max(inp.memory.capacity, 1)
    if inp.reload is not None:
        fallback_cost = inp.reload
    else:
        fallback_cost = inp.recompute * eviction_risk(inp.memory)
    best_gain, best = 0.0, None
    for tau, p_return, held in inp.gap.ttl_table(config.ttl_max, TTL_QUANTILES):
        gain = p_return * fallback_cost - price * share * held
        if gain > best_gain:
            best_gain, best = gain, Retention(
                "pin", ttl=tau, host_copy=inp.reload is not None and config.pin_host_copy)
    if best is not None:
        return best
    # the fallback, built only when no pin beats it (an offload asks a quantile more)
    return _offload(inp, config) if inp.reload is not None else RELEASE


def ttl_candidates(gap: Gap, config: SagaConfig) -> list[float]:
    return [tau for tau, _, _ in gap.ttl_table(config.ttl_max, TTL_QUANTILES)]


def _offload(inp: RetentionInput, config: SagaConfig) -> Retention:
    """Offload, prefetching so the KV is back by an early quantile of the gap."""
    assert inp.reload is not None
    back_by = inp.now + inp.gap.quantile(config.prefetch_quantile)
    return Retention("offload", prefetch_at=max(inp.now, back_by - inp.reload))
