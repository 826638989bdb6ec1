"""Retention decisions, table-driven with the numbers that decide them."""

from __future__ import annotations

import math

import pytest

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import Gap, LogNormal
from saga.sched.saga.retention import (
    MemoryState,
    RetentionInput,
    decide,
    shadow_price,
    ttl_candidates,
)

# the priced pin-or-offload rule (pin_with_host on; the default is off since the sixth
# session: tests below); price_idle 0.05, price_per_waiting 1.0, knee 0.5
CFG = SagaConfig(pin_with_host=True)
GAP = Gap(0.9, ((1.0, LogNormal(math.log(5.0), 0.5)),))  # returns 90 %, median 5 s
CALM = MemoryState(capacity=1000, held=600, waiting_demand=0, waiting_calls=0)
BUSY = MemoryState(capacity=1000, held=900, waiting_demand=300, waiting_calls=10)


def test_shadow_price_numbers() -> None:
    assert shadow_price(CALM, CFG) == pytest.approx(0.05 + 1.0 * 0 * 0.2)
    # pressure (800 + 100) / 1000 = 0.9 -> (0.9 - 0.5) / 0.5 = 0.8 past the knee
    mem = MemoryState(capacity=1000, held=800, waiting_demand=100, waiting_calls=4)
    assert shadow_price(mem, CFG) == pytest.approx(0.05 + 4 * 0.8)
    # pressure (900 + 300) / 1000 = 1.2 -> 1.4 past the knee (demand beyond capacity counts)
    assert shadow_price(BUSY, CFG) == pytest.approx(0.05 + 10 * 1.4)


def _inp(memory: MemoryState, reload: float | None, *, ends: bool = False,
         gap: Gap = GAP) -> RetentionInput:
    return RetentionInput(now=100.0, ends=ends, gap=gap, blocks=100, recompute=4.0,
                          reload=reload, memory=memory)


# (case, memory, reload, expected kind, why)
CASES = [
    # calm, no host: fallback = release, cost 4 s x eviction risk 0.6 = 2.4 s;
    # price 0.05 x share 0.1 = 0.005 s per second held: the longest TTL wins
    ("pin-calm", CALM, None, "pin"),
    # calm with a host tier: fallback = offload, cost = reload 0.5 s; holding is still
    # almost free (0.005 s/s), so a pin beats even a cheap reload
    ("pin-over-offload", CALM, 0.5, "pin"),
    # busy with a host: price 14.05 x share 0.1 = 1.405 s per second held, against at
    # most 0.9 x 0.5 s saved: offload (and prefetch) wins
    ("offload-busy", BUSY, 0.5, "offload"),
    # busy without a host: saving at most 0.9 x 4 s x risk 1.0 = 3.6 s, holding for
    # E[min(gap, tau)] >= 4 s costs >= 1.405 x 4 = 5.6 s: release wins
    ("release-busy", BUSY, None, "release"),
]


@pytest.mark.parametrize(("case", "memory", "reload", "kind"), CASES, ids=[c[0] for c in CASES])
def test_retention_table(case: str, memory: MemoryState, reload: float | None, kind: str) -> None:
    decision = decide(_inp(memory, reload), CFG)
    assert decision.kind == kind
    if kind == "pin":
        # the gain grows with tau here, so the longest candidate (the 0.99 quantile) wins
        assert decision.ttl == pytest.approx(5.0 * math.exp(0.5 * 2.3263478740), rel=1e-6)
        assert decision.ttl == max(ttl_candidates(GAP, CFG))
    if kind == "offload":
        # back by the 0.2 quantile of the gap, minus the reload time
        q20 = 5.0 * math.exp(0.5 * -0.8416212336)
        assert decision.prefetch_at == pytest.approx(100.0 + q20 - 0.5, rel=1e-6)


def test_drop_when_the_workflow_ends_or_will_not_return() -> None:
    assert decide(_inp(CALM, None, ends=True), CFG).kind == "drop"
    unlikely = Gap(0.01, GAP.mixture)
    assert decide(_inp(CALM, None, gap=unlikely), CFG).kind == "drop"


def test_ttl_shrinks_as_waiting_work_grows_and_converges_to_release() -> None:
    """Adaptive behaviour at saturation: more waiting calls, higher price, shorter pins."""
    ttls = []
    for waiting in range(0, 12):
        mem = MemoryState(capacity=1000, held=950, waiting_demand=0, waiting_calls=waiting)
        d = decide(_inp(mem, None), CFG)
        ttls.append(d.ttl if d.kind == "pin" else 0.0)
    assert ttls == sorted(ttls, reverse=True)
    assert ttls[0] > 0 and ttls[-1] == 0.0


def test_ttl_is_capped() -> None:
    cfg = SagaConfig(ttl_max=3.0)
    assert decide(_inp(CALM, None), cfg).ttl == 3.0


NO_HOST_PINS = SagaConfig()  # the default: no pin over a host tier


def test_no_pin_over_a_host_tier_offloads_even_when_memory_is_calm() -> None:
    """`pin_with_host` off: where the default pins (calm, reload 0.5 s: "pin-over-offload")
    the KV goes to the host, back by the gap's 0.2 quantile less the reload."""
    assert decide(_inp(CALM, 0.5), CFG).kind == "pin"
    decision = decide(_inp(CALM, 0.5), NO_HOST_PINS)
    assert decision.kind == "offload"
    assert decision.ttl == 0.0
    q20 = 5.0 * math.exp(0.5 * -0.8416212336)
    assert decision.prefetch_at == pytest.approx(100.0 + q20 - 0.5, rel=1e-6)


def test_no_pin_over_a_host_tier_keeps_pins_without_one_and_drop_and_release() -> None:
    """Without a host tier the rule is the default's, bit for bit; a drop (end, or no
    return) and a workflow with no private blocks are decided before it."""
    for memory in (CALM, BUSY):
        assert decide(_inp(memory, None), NO_HOST_PINS) == decide(_inp(memory, None), CFG)
    assert decide(_inp(CALM, None), NO_HOST_PINS).kind == "pin"
    assert decide(_inp(CALM, 0.5, ends=True), NO_HOST_PINS).kind == "drop"
    empty = RetentionInput(now=100.0, ends=False, gap=GAP, blocks=0, recompute=4.0,
                           reload=0.5, memory=CALM)
    assert decide(empty, NO_HOST_PINS).kind == "release"


def test_pin_host_copy_marks_pins_over_a_host_tier_only() -> None:
    """`pin_host_copy`: the same pin (kind, TTL) as the default's, with the write-through
    asked for only where a host tier can hold the blocks."""
    copy = SagaConfig(pin_with_host=True, pin_host_copy=True)
    default = decide(_inp(CALM, 0.5), CFG)
    written = decide(_inp(CALM, 0.5), copy)
    assert default.kind == written.kind == "pin" and written.ttl == default.ttl
    assert not default.host_copy and written.host_copy
    no_host = decide(_inp(CALM, None), copy)
    assert no_host.kind == "pin" and not no_host.host_copy
    assert decide(_inp(BUSY, 0.5), copy) == decide(_inp(BUSY, 0.5), CFG)  # an offload


def test_pin_host_copy_without_pins_over_a_host_tier_is_refused() -> None:
    """With `pin_with_host` off (the default) no pin is taken over a host tier, so a
    write-through would silently do nothing: the configuration says so instead."""
    with pytest.raises(ValueError, match="pin_host_copy needs pin_with_host"):
        SagaConfig(pin_host_copy=True)
    assert SagaConfig(pin_with_host=True, pin_host_copy=True).pin_host_copy
